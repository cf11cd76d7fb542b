"""The model zoo used by the tests: small own-defined models covering the residual patterns."""
