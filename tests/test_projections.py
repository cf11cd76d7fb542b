"""The math layer: exact simplex / floored-simplex projections, softmax, Gumbel, Sinkhorn.

The simplex projections are checked against an exact sparsemax computed in
rationals with sympy, against their KKT conditions, and against each other; the
identity init (DESIGN §1) is checked for exact equality and a live gradient.
"""

from __future__ import annotations

import fractions

import numpy as np
import pytest
import sympy
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mhc_fx import projections as P
from mhc_fx.config import HC_INIT_GAP, MHCConfig
from mhc_fx.ops import gumbel_from_uniform
from tests.helpers import NonMetaOutputs

F64 = torch.float64
METHODS = ("sort", "pairwise")


# --------------------------------------------------------------------------- references


def sparsemax_exact(theta, radius=1):
    """Exact Euclidean projection of ``theta`` onto {a >= 0, sum a = radius}, in rationals.

    Sort descending, the support is the longest prefix with ``radius + j z_j > sum_{i<=j} z_i``,
    ``tau = (sum_support - radius) / |support|`` and ``a = max(theta - tau, 0)``.
    Returns (alpha, tau) as sympy Rationals.
    """
    theta = [sympy.Rational(t) for t in theta]
    radius = sympy.Rational(radius)
    z = sorted(theta, reverse=True)
    cumsum, size, support_sum = sympy.Integer(0), 0, sympy.Integer(0)
    for j, zj in enumerate(z, 1):
        cumsum += zj
        if radius + j * zj > cumsum:
            size, support_sum = j, cumsum
    tau = (support_sum - radius) / size
    return [max(t - tau, sympy.Integer(0)) for t in theta], tau


def floored_exact(theta, epsilon):
    """Exact projection onto {a in simplex, a_last >= epsilon}: with beta = a - eps e_last,
    beta is the projection of theta - eps e_last onto the simplex of radius 1 - eps.
    Returns (alpha, tau, shifted theta) in rationals."""
    eps = sympy.Rational(epsilon)
    theta = [sympy.Rational(t) for t in theta]
    shifted = theta[:-1] + [theta[-1] - eps]
    beta, tau = sparsemax_exact(shifted, 1 - eps)
    return beta[:-1] + [beta[-1] + eps], tau, shifted


def rows(x: torch.Tensor):
    return x.reshape(-1, x.shape[-1])


def e_last(k: int, dtype=torch.float32, batch=()) -> torch.Tensor:
    e = torch.zeros(*batch, k, dtype=dtype)
    e[..., -1] = 1
    return e


def project(theta, epsilon, method):
    if epsilon is None:
        return P.project_simplex(theta, method=method)
    return P.project_floored_simplex(theta, epsilon, method=method)


# --------------------------------------------------------------------------- strategies

# Values from a small grid make exact ties likely; wide floats make spread-out inputs.
_element = st.one_of(
    st.floats(-10, 10, allow_nan=False, allow_infinity=False, width=64),
    st.sampled_from([-1.0, 0.0, 0.25, 0.5, 1.0]),
)


@st.composite
def theta_arrays(draw, max_k=12):
    batch = draw(st.lists(st.integers(1, 3), min_size=0, max_size=2))
    k = draw(st.integers(1, max_k))
    scale = draw(st.sampled_from([0.1, 1.0, 3.0]))
    arr = draw(hnp.arrays(np.float64, tuple(batch) + (k,), elements=_element))
    return torch.from_numpy(arr * scale)


epsilons = st.one_of(st.sampled_from([0.0, 0.05, 0.3]), st.floats(0.0, 0.95))
maybe_eps = st.one_of(st.none(), epsilons)


# --------------------------------------------------------------------------- properties


@given(theta=theta_arrays(), method=st.sampled_from(METHODS), eps=maybe_eps)
def test_result_lies_on_the_simplex(theta, method, eps):
    alpha = project(theta, eps, method)
    assert alpha.dtype == F64 and alpha.shape == theta.shape
    assert (alpha >= 0).all()
    torch.testing.assert_close(alpha.sum(-1), torch.ones(theta.shape[:-1], dtype=F64), atol=1e-12, rtol=0)
    if eps is not None:
        assert (alpha[..., -1] >= eps).all()  # exactly, not just up to rounding


@pytest.mark.parametrize("method", METHODS)
def test_floored_last_entry_on_the_bound_is_not_rounded_below_it(method):
    # 1 - 3 * (1/3) is -4.4e-16 in float64: the last weight was slightly negative
    theta = torch.tensor([[3.0, 3.0, 3.0, 0.0], [3.0, 3.0, 3.0, -5.0]], dtype=F64)
    alpha = P.project_floored_simplex(theta, 0.0, method=method)
    assert (alpha >= 0).all()
    assert torch.equal(alpha[:, -1], torch.zeros(2, dtype=F64))
    torch.testing.assert_close(alpha, P.project_simplex(theta, method=method), atol=1e-15, rtol=0)
    floored = P.project_floored_simplex(theta, 0.3, method=method)
    assert (floored[:, -1] >= 0.3).all()


@given(theta=theta_arrays(), method=st.sampled_from(METHODS), eps=maybe_eps)
def test_exact_zeros_match_the_rational_reference(theta, method, eps):
    """Sparse: every entry strictly below the exact threshold is an exact 0.0, and no
    entry the exact answer keeps positive is zeroed."""
    alpha = rows(project(theta, eps, method))
    for t, a in zip(rows(theta).tolist(), alpha):
        if eps is None:
            ref, tau = sparsemax_exact(t)
            shifted = [sympy.Rational(v) for v in t]
        else:
            ref, tau, shifted = floored_exact(t, eps)
        # Entries within float rounding of the threshold may land either way.
        margin = 1e-12 * (1 + max(abs(v) for v in t))
        strictly_out = [bool(s < tau - margin) for s in shifted]
        if eps is not None:
            strictly_out[-1] = False  # the last entry keeps at least eps
        n_strict = sum(strictly_out)
        n_zero_ref = sum(bool(r <= margin) for r in ref)
        n_zero = int((a == 0).sum())
        assert n_strict <= n_zero <= n_zero_ref
        for k, out in enumerate(strictly_out):
            if out:
                assert a[k].item() == 0.0, (t, k)
        # spread out: the smallest entry is more than 1 below the largest -> it is dropped
        if eps is None and max(t) - min(t) > 1 + 1e-9:
            assert a[int(np.argmin(t))].item() == 0.0


def test_spread_out_logits_give_exact_zeros():
    theta = torch.tensor([[0.0, 2.0, 4.0, 6.0], [3.0, -1.0, 2.6, 0.0]], dtype=F64)
    for method in METHODS:
        alpha = P.project_simplex(theta, method=method)
        assert torch.equal(alpha[0], torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=F64))
        assert torch.equal(alpha[1] == 0, torch.tensor([False, True, False, True]))
        torch.testing.assert_close(alpha[1], torch.tensor([0.7, 0.0, 0.3, 0.0], dtype=F64), atol=1e-15, rtol=0)
        floored = P.project_floored_simplex(theta, 0.3, method=method)
        assert torch.equal(floored[0], alpha[0])
        # shifted [3, -1, 2.6, -0.3] onto radius 0.7: tau = 2.45, beta = [0.55, 0, 0.15, 0]
        torch.testing.assert_close(floored[1], torch.tensor([0.55, 0.0, 0.15, 0.3], dtype=F64), atol=1e-15, rtol=0)
        assert torch.equal(floored[1] == 0, torch.tensor([False, True, False, False]))


@given(theta=theta_arrays(), method=st.sampled_from(METHODS), eps=maybe_eps)
def test_idempotent(theta, method, eps):
    once = project(theta, eps, method)
    twice = project(once, eps, method)
    torch.testing.assert_close(twice, once, atol=1e-12, rtol=0)


@given(
    theta=theta_arrays(),
    method=st.sampled_from(METHODS),
    eps=maybe_eps,
    shift=st.floats(-50, 50, allow_nan=False),
)
def test_shift_invariant(theta, method, eps, shift):
    torch.testing.assert_close(project(theta + shift, eps, method), project(theta, eps, method), atol=1e-11, rtol=0)


@given(
    values=st.lists(st.fractions(min_value=-4, max_value=4, max_denominator=12), min_size=1, max_size=5),
    method=st.sampled_from(METHODS),
    eps=st.one_of(st.none(), st.sampled_from([0.0, 0.05, 0.25, 0.3, 0.5])),
)
def test_optimal_against_exact_rational_reference(values, method, eps):
    theta = torch.tensor([float(v) for v in values], dtype=F64)
    exact = [sympy.Rational(v.numerator, v.denominator) for v in values]
    if eps is None:
        ref, _ = sparsemax_exact(exact)
    else:
        ref, _, _ = floored_exact(exact, eps)
    alpha = project(theta, eps, method)
    expected = torch.tensor([float(r) for r in ref], dtype=F64)
    torch.testing.assert_close(alpha, expected, atol=1e-12, rtol=0)


@given(
    values=st.lists(st.integers(-40, 40), min_size=1, max_size=5),
    denominator=st.sampled_from([1, 2, 4, 8, 16]),
    method=st.sampled_from(METHODS),
    eps=st.one_of(st.none(), st.sampled_from([0.0, 0.25, 0.5])),
)
def test_dyadic_inputs_give_the_exact_answer_bit_for_bit_on_zeros(values, denominator, method, eps):
    """With inputs exact in float64, the support (hence every exact zero) is the exact one."""
    exact = [sympy.Rational(v, denominator) for v in values]
    theta = torch.tensor([float(v) for v in exact], dtype=F64)
    if eps is None:
        ref, tau = sparsemax_exact(exact)
        shifted = exact
    else:
        ref, tau, shifted = floored_exact(exact, eps)
    alpha = project(theta, eps, method)
    torch.testing.assert_close(alpha, torch.tensor([float(r) for r in ref], dtype=F64), atol=1e-13, rtol=0)
    for k, (s, r) in enumerate(zip(shifted, ref)):
        if s < tau and not (eps is not None and k == len(exact) - 1):
            assert alpha[k].item() == 0.0
        if r > 0:
            assert alpha[k].item() > 0.0


def _kkt_check(theta: torch.Tensor, alpha: torch.Tensor, eps: float | None, tol: float = 1e-9) -> None:
    """Stationarity + complementary slackness of min ||a - theta||^2 over the (floored) simplex:
    one tau with theta_k - a_k = tau where a_k is above its lower bound, theta_k - a_k <= tau
    where a_k sits on its bound (0, or eps for the last entry)."""
    k = theta.shape[-1]
    lower = torch.zeros(k, dtype=F64)
    if eps is not None:
        lower[-1] = eps
    for t, a in zip(rows(theta), rows(alpha)):
        free = a > lower + 1e-12
        if not free.any():  # only possible with eps = 1 - (nothing): a_last == eps == 1
            continue
        residual = t - a
        tau = residual[free].mean()
        assert (residual[free] - tau).abs().max() <= tol
        assert (residual[~free] <= tau + tol).all()
        # variational inequality at every vertex v of the set: <theta - a, v - a> <= 0
        floor = 0.0 if eps is None else eps
        vertices = (1 - floor) * torch.eye(k, dtype=F64)
        vertices[:, -1] += floor
        assert ((vertices - a) @ (t - a) <= tol).all()


@given(theta=theta_arrays(), method=st.sampled_from(METHODS), eps=maybe_eps)
def test_kkt_conditions(theta, method, eps):
    _kkt_check(theta, project(theta, eps, method), eps)


@given(
    theta=st.one_of(
        theta_arrays(max_k=40),
        # small-integer grids: many exact ties
        st.builds(
            lambda a: torch.from_numpy(a) / 4,
            hnp.arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(1, 40)), elements=st.integers(-6, 6)),
        ),
    ),
    eps=maybe_eps,
)
def test_sort_and_pairwise_agree(theta, eps):
    torch.testing.assert_close(project(theta, eps, "sort"), project(theta, eps, "pairwise"), atol=1e-12, rtol=0)


@pytest.mark.parametrize("k", [17, 40, 64])
def test_sort_and_pairwise_agree_large_k_with_ties(k):
    theta = torch.randn(6, k, dtype=F64) * 2
    theta[0] = 0.0  # all tied
    theta[1, ::2] = theta[1, 1]  # half tied with one value
    theta[2] = torch.round(theta[2])  # integer ties
    for eps in (None, 0.1):
        sort, pairwise = project(theta, eps, "sort"), project(theta, eps, "pairwise")
        torch.testing.assert_close(sort, pairwise, atol=1e-12, rtol=0)
        assert (sort >= 0).all() and (sort[0] > 0).all()  # all tied: uniform, nothing dropped
    # float32 too
    torch.testing.assert_close(
        P.project_simplex(theta.float(), method="sort"),
        P.project_simplex(theta.float(), method="pairwise"),
        atol=1e-6,
        rtol=0,
    )


@pytest.mark.parametrize("k", [1, 3, 16, 17, 30])
def test_auto_method_dispatches_by_k(k):
    theta = torch.randn(4, k, dtype=F64)
    expected = "pairwise" if k <= P.PAIRWISE_MAX_K else "sort"
    assert torch.equal(P.project_simplex(theta), P.project_simplex(theta, method=expected))
    assert torch.equal(P.project_floored_simplex(theta, 0.2), P.project_floored_simplex(theta, 0.2, method=expected))


# --------------------------------------------------------------------------- gradients


def _separated_logits(k: int, batch: int, seed: int, epsilon: float | None = None) -> torch.Tensor:
    """Random float64 logits whose values are pairwise >= 1e-3 apart and >= 1e-3 from the
    exact threshold (so the projection is differentiable there, as gradcheck needs)."""
    gen = torch.Generator().manual_seed(seed)
    accepted = []
    while len(accepted) < batch:
        t = torch.randn(k, generator=gen, dtype=F64) * 1.5
        if k > 1 and torch.pdist(t[:, None]).min() < 1e-3:
            continue
        values = t.tolist()
        if epsilon is None:
            _, tau = sparsemax_exact(values)
            shifted = values
        else:
            _, tau, shifted = floored_exact(values, epsilon)
        if min(abs(float(s - tau)) for s in shifted) < 1e-3:
            continue
        accepted.append(t)
    return torch.stack(accepted).requires_grad_()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("k", [1, 2, 5, 9])
def test_gradcheck_project_simplex(method, k):
    theta = _separated_logits(k, batch=3, seed=k)
    assert torch.autograd.gradcheck(lambda t: P.project_simplex(t, method=method), (theta,))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("k,eps", [(2, 0.05), (5, 0.3), (7, 0.05), (4, 0.0)])
def test_gradcheck_project_floored_simplex(method, k, eps):
    theta = _separated_logits(k, batch=3, seed=10 + k, epsilon=eps)
    assert torch.autograd.gradcheck(lambda t: P.project_floored_simplex(t, eps, method=method), (theta,))


def test_gradcheck_softmax():
    theta = torch.randn(2, 3, 5, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: P.softmax(t, temperature=0.7), (theta,))


def test_gradcheck_sinkhorn_fixed_iterations():
    logits = torch.randn(2, 4, 4, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: P.sinkhorn(t, temperature=0.8, max_iter=6, tol=None), (logits,))


@pytest.mark.parametrize("floor", [None, 0.2])
def test_gradcheck_gumbel_softmax_fixed_generator(floor):
    probs = torch.softmax(torch.randn(3, 5, dtype=F64), -1)

    def fn(p):
        gen = torch.Generator().manual_seed(1234)
        return P.gumbel_softmax(p, temperature=2.0, generator=gen, floor=floor)

    if floor is not None:  # the floored re-projection must be away from a tie at this sample
        with torch.no_grad():
            gen = torch.Generator().manual_seed(1234)
            sample = P.gumbel_softmax(probs, temperature=2.0, generator=gen)
        for row in sample.tolist():
            _, tau, shifted = floored_exact(row, floor)
            assert min(abs(float(s - tau)) for s in shifted) > 1e-3
    assert torch.autograd.gradcheck(fn, (probs.requires_grad_(),))


# --------------------------------------------------------------------------- identity init (DESIGN §1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("k", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("method", METHODS)
def test_identity_init_is_exactly_e_last(dtype, k, method):
    e = e_last(k, dtype, batch=(3,))
    assert torch.equal(P.project_simplex(e, method=method), e)
    for eps in (0.05, 0.3):
        assert torch.equal(P.project_floored_simplex(e, eps, method=method), e)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("temperature", [0.7, 1.0, 1.3, 3.1, 0.01])
@pytest.mark.parametrize("constraint,eps", [("simplex", 0.05), ("identity", 0.05), ("identity", 0.3)])
def test_identity_init_through_mixing_weights(dtype, temperature, constraint, eps):
    """theta = temperature * e_last (as `initial_logits` makes it, then cast like a model's
    `.to(dtype)`), divided by the temperature inside `mixing_weights`: exactly e_last, and a
    live gradient (g - mean g) / T for every entry."""
    cfg = MHCConfig(mode="mhc", temperature=temperature, constraint=constraint, epsilon=eps)
    k = 4
    theta = P.initial_logits(cfg, k)
    assert torch.equal(theta, temperature * e_last(k))
    theta = theta.to(dtype).requires_grad_()
    alpha = P.mixing_weights(theta, cfg)
    assert alpha.dtype == dtype
    assert torch.equal(alpha, e_last(k, dtype))
    g = torch.tensor([0.5, 2.0, -1.0, 0.25], dtype=F64)
    (alpha.double() * g).sum().backward()
    expected = (g - g.mean()) / temperature
    tol = 1e-6 if dtype in (torch.float32, torch.float64) else 2e-2
    torch.testing.assert_close(theta.grad.double(), expected, atol=tol * expected.abs().max().item(), rtol=0)
    assert (theta.grad != 0).all()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("eps", [None, 0.05, 0.3])
@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-12), (torch.float32, 1e-6), (torch.bfloat16, 2e-2)])
def test_identity_init_gradient_is_g_minus_mean_over_the_support(method, eps, dtype, atol):
    k = 5
    theta = e_last(k, dtype).requires_grad_()
    alpha = project(theta, eps, method)
    assert torch.equal(alpha, e_last(k, dtype))
    g = torch.tensor([0.5, 3.0, -1.0, 0.0, 0.25], dtype=F64)  # favours the older entry 1
    (alpha.double() * g).sum().backward()
    torch.testing.assert_close(theta.grad.double(), g - g.mean(), atol=atol, rtol=0)
    # not frozen: one ascent step on the reward lets the favoured older state in
    with torch.no_grad():
        stepped = theta.double() + 0.1 * theta.grad.double()
    moved = project(stepped, eps, method)
    assert moved[1] > 0 and moved[-1] < 1


def test_strictly_inside_the_vertex_cone_is_frozen():
    """Contrast for the test above: theta = 2 e_last is also projected to e_last, but the
    older entries are strictly outside the support, so they get no gradient."""
    theta = (2 * e_last(4, F64)).requires_grad_()
    alpha = P.project_simplex(theta)
    assert torch.equal(alpha, e_last(4, F64))
    (alpha * torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=F64)).sum().backward()
    assert torch.equal(theta.grad[:-1], torch.zeros(3, dtype=F64))


# --------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_are_computed_in_float32_and_returned_in_their_dtype(dtype):
    theta = (torch.randn(5, 7) * 2).to(dtype)
    probs = torch.softmax(torch.randn(5, 7), -1).to(dtype)
    square = torch.randn(3, 4, 4).to(dtype)

    def gumbel(p, floor=None):
        return P.gumbel_softmax(p, temperature=0.5, generator=torch.Generator().manual_seed(7), floor=floor)

    cases = [
        (lambda t: P.project_simplex(t, method="sort"), theta),
        (lambda t: P.project_simplex(t, method="pairwise"), theta),
        (lambda t: P.project_floored_simplex(t, 0.1), theta),
        (lambda t: P.softmax(t, 0.7), theta),
        (gumbel, probs),
        (lambda p: gumbel(p, 0.2), probs),
        (lambda t: P.sinkhorn(t, max_iter=5, tol=None), square),
    ]
    for fn, x in cases:
        out = fn(x)
        assert out.dtype == dtype
        assert torch.equal(out, fn(x.float()).to(dtype))
    # and the simplex survives the rounding
    out = P.project_simplex(theta)
    assert (out >= 0).all()
    torch.testing.assert_close(out.float().sum(-1), torch.ones(5), atol=2e-2, rtol=0)


@given(theta=theta_arrays(), temperature=st.floats(0.05, 10.0), seed=st.integers(0, 2**16))
def test_softmax_and_gumbel_softmax_lie_on_the_simplex(theta, temperature, seed):
    soft = P.softmax(theta, temperature)
    torch.testing.assert_close(soft, torch.softmax(theta / temperature, -1), atol=1e-15, rtol=0)
    probs = P.project_simplex(theta)  # sparse probabilities, as in stochastic mhc
    sample = P.gumbel_softmax(probs, temperature=temperature, generator=_gen(seed))
    assert sample.dtype == F64 and sample.shape == theta.shape
    assert (sample >= 0).all()
    torch.testing.assert_close(sample.sum(-1), torch.ones(theta.shape[:-1], dtype=F64), atol=1e-12, rtol=0)
    assert (sample[probs == 0] < 1e-20).all()
    floored = P.gumbel_softmax(probs, temperature=temperature, generator=_gen(seed), floor=0.25)
    assert (floored[..., -1] >= 0.25).all() and (floored >= 0).all()


# --------------------------------------------------------------------------- sinkhorn


def test_sinkhorn_is_doubly_stochastic_within_tol():
    logits = torch.randn(3, 5, 5, dtype=F64) * 3
    for tol in (1e-4, 1e-8):
        out = P.sinkhorn(logits, max_iter=500, tol=tol)
        assert (out >= 0).all()
        assert (out.sum(-1) - 1).abs().max() <= tol
        assert (out.sum(-2) - 1).abs().max() <= 1e-12  # the last step normalises columns


def test_sinkhorn_tol_none_runs_exactly_max_iter():
    logits = torch.randn(2, 4, 4, dtype=F64) * 3

    def manual(n):
        log_p = logits / 0.5
        for _ in range(n):
            log_p = log_p - torch.logsumexp(log_p, -1, keepdim=True)
            log_p = log_p - torch.logsumexp(log_p, -2, keepdim=True)
        return log_p.exp()

    assert torch.equal(P.sinkhorn(logits, temperature=0.5, max_iter=3, tol=None), manual(3))
    assert not torch.equal(manual(3), manual(4))
    # a loose tol stops after the first iteration; tol=None with the same cap does not
    assert torch.equal(P.sinkhorn(logits, temperature=0.5, max_iter=3, tol=10.0), manual(1))


@pytest.mark.parametrize(
    "kwargs,logits_shape,match",
    [
        ({}, (3, 4), "square"),
        ({}, (4,), "square"),
        ({"max_iter": 0}, (3, 3), "max_iter"),
        ({"max_iter": 2.5}, (3, 3), "max_iter"),
        ({"max_iter": True}, (3, 3), "max_iter"),
        ({"tol": 0.0}, (3, 3), "tol"),
        ({"tol": -1e-3}, (3, 3), "tol"),
        ({"temperature": 0.0}, (3, 3), "temperature"),
        ({"temperature": -1.0}, (3, 3), "temperature"),
    ],
)
def test_sinkhorn_bad_arguments(kwargs, logits_shape, match):
    with pytest.raises(ValueError, match=match):
        P.sinkhorn(torch.randn(logits_shape), **kwargs)


# --------------------------------------------------------------------------- gumbel


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_gumbel_softmax_same_seed_same_sample_different_seed_differs():
    probs = torch.softmax(torch.randn(4, 6), -1)
    a = P.gumbel_softmax(probs, generator=_gen(3))
    b = P.gumbel_softmax(probs, generator=_gen(3))
    c = P.gumbel_softmax(probs, generator=_gen(4))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    torch.testing.assert_close(a.sum(-1), torch.ones(4), atol=1e-6, rtol=0)
    # the global RNG is used without a generator
    torch.manual_seed(5)
    d = P.gumbel_softmax(probs)
    torch.manual_seed(5)
    assert torch.equal(d, P.gumbel_softmax(probs))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
@pytest.mark.parametrize("floor", [0.05, 0.5])
def test_gumbel_softmax_respects_the_floor(dtype, tol, floor):
    probs = torch.softmax(torch.randn(64, 5, dtype=dtype) * 3, -1)
    probs[:, -1] = 0  # the latest state has no mass: the floor must still hold
    probs = probs / probs.sum(-1, keepdim=True)
    for seed in range(5):
        out = P.gumbel_softmax(probs, temperature=0.5, generator=_gen(seed), floor=floor)
        assert (out[:, -1] >= floor - tol).all()
        assert (out >= 0).all()
        torch.testing.assert_close(out.sum(-1), torch.ones(64, dtype=dtype), atol=tol, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0, 10.0])
def test_gumbel_softmax_keeps_exact_zeros_of_probs(dtype, temperature):
    probs = torch.tensor([[0.0, 0.3, 0.0, 0.7], [0.0, 0.0, 0.0, 1.0], [0.01, 0.0, 0.99, 0.0]], dtype=dtype)
    zero = probs == 0
    for seed in range(50):
        out = P.gumbel_softmax(probs, temperature=temperature, generator=_gen(seed))
        assert out[zero].abs().max() < 1e-20
        assert (out[~zero] > 0).all() or dtype == torch.bfloat16


def test_gumbel_softmax_zero_probs_get_no_nan_gradient():
    probs = torch.tensor([0.0, 0.25, 0.75], dtype=F64, requires_grad=True)
    out = P.gumbel_softmax(probs, generator=_gen(0))
    (out * torch.tensor([1.0, 2.0, 3.0], dtype=F64)).sum().backward()
    assert torch.isfinite(probs.grad).all()
    assert probs.grad[0] == 0


# --------------------------------------------------------------------------- mixing_weights / initial_logits


def test_mixing_weights_residual_is_e_last_whatever_theta():
    cfg = MHCConfig(mode="residual")
    theta = torch.randn(2, 3, 5)
    assert torch.equal(P.mixing_weights(theta, cfg), e_last(5, batch=(2, 3)))
    assert torch.equal(P.mixing_weights(theta, cfg, training=True), e_last(5, batch=(2, 3)))


def test_mixing_weights_hc_is_softmax_over_temperature():
    cfg = MHCConfig(mode="hc", temperature=0.7)
    theta = torch.randn(3, 6, dtype=F64)
    torch.testing.assert_close(P.mixing_weights(theta, cfg), torch.softmax(theta / 0.7, -1), atol=1e-15, rtol=0)


@pytest.mark.parametrize("constraint,eps", [("simplex", 0.05), ("identity", 0.05), ("identity", 0.3)])
def test_mixing_weights_mhc_is_the_projection_of_theta_over_temperature(constraint, eps):
    cfg = MHCConfig(mode="mhc", temperature=2.0, constraint=constraint, epsilon=eps)
    theta = torch.randn(4, 5, dtype=F64) * 3
    if constraint == "simplex":
        expected = P.project_simplex(theta / 2.0)
    else:
        expected = P.project_floored_simplex(theta / 2.0, eps)
    assert torch.equal(P.mixing_weights(theta, cfg), expected)
    assert (expected == 0).any()  # the test input is sparse enough to mean something


@pytest.mark.parametrize("mode,constraint", [("mhc", "simplex"), ("mhc", "identity"), ("hc", "simplex")])
def test_mixing_weights_stochastic_only_in_training(mode, constraint):
    theta = torch.tensor([0.6, 0.2, 0.9, 1.0])
    plain = MHCConfig(mode=mode, constraint=constraint, epsilon=0.2)
    noisy = MHCConfig(mode=mode, constraint=constraint, epsilon=0.2, stochastic=True)
    expected = P.mixing_weights(theta, plain)
    assert torch.equal(P.mixing_weights(theta, noisy, training=False), expected)
    assert torch.equal(P.mixing_weights(theta, plain, training=True), expected)
    sampled = P.mixing_weights(theta, noisy, training=True, generator=_gen(0))
    assert not torch.allclose(sampled, expected, atol=1e-3)
    assert torch.equal(sampled, P.mixing_weights(theta, noisy, training=True, generator=_gen(0)))
    torch.testing.assert_close(sampled.sum(), torch.tensor(1.0), atol=1e-6, rtol=0)
    if constraint == "identity" and mode == "mhc":
        assert sampled[-1] >= 0.2 - 1e-6


@pytest.mark.parametrize(
    "options",
    [dict(mode="residual"), dict(mode="hc"), dict(), dict(constraint="identity"), dict(stochastic=True)],
    ids=["residual", "hc", "mhc", "identity", "stochastic"],
)
def test_mixing_weights_creates_no_tensor_on_another_device(options):
    # regression: a CPU temperature tensor copied to the device each call (blocking on CUDA,
    # and uncapturable in a CUDA graph). Every intermediate must live on theta's device.
    cfg = MHCConfig(**options)
    theta = torch.zeros(4, device="meta", requires_grad=True)
    with NonMetaOutputs() as recorder:
        alpha = P.mixing_weights(theta, cfg, training=True)
        if alpha.requires_grad:
            alpha.sum().backward()
    assert alpha.device.type == "meta" and recorder.ops == []


@pytest.mark.parametrize("constraint", ["simplex", "identity"])
def test_stochastic_mhc_is_perturb_and_project(constraint):
    cfg = MHCConfig(mode="mhc", constraint=constraint, epsilon=0.2, temperature=0.5, stochastic=True)
    theta = torch.tensor([0.6, 0.2, 0.9, 1.0], dtype=F64)
    noise = gumbel_from_uniform(torch.rand(4, generator=_gen(3), dtype=F64))
    scaled = theta / 0.5 + noise / 0.5
    expected = P.project_simplex(scaled) if constraint == "simplex" else P.project_floored_simplex(scaled, 0.2)
    assert torch.equal(P.mixing_weights(theta, cfg, training=True, generator=_gen(3)), expected)


@pytest.mark.parametrize("constraint", ["simplex", "identity"])
def test_stochastic_mhc_learns_from_the_identity_init(constraint):
    # regression: a Gumbel-softmax around the sparse e_last gave exactly zero gradient
    cfg = MHCConfig(mode="mhc", constraint=constraint, stochastic=True)
    theta = P.initial_logits(cfg, 4).requires_grad_()
    grads = []
    for seed in range(8):
        alpha = P.mixing_weights(theta, cfg, training=True, generator=_gen(seed))
        assert (alpha >= 0).all() and abs(alpha.sum().item() - 1) < 1e-6
        (grad,) = torch.autograd.grad((alpha * torch.arange(4.0)).sum(), theta)
        grads.append(grad)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("mode", ["mhc", "residual"])
def test_initial_logits_mhc_and_residual(mode):
    cfg = MHCConfig(mode=mode, temperature=0.5)
    theta = P.initial_logits(cfg, 4)
    assert theta.dtype == torch.float32
    assert torch.equal(theta, torch.tensor([0.0, 0.0, 0.0, 0.5]))


def test_initial_logits_hc_is_latest_biased():
    cfg = MHCConfig(mode="hc", temperature=0.5)
    theta = P.initial_logits(cfg, 4)
    assert torch.equal(theta, torch.tensor([-HC_INIT_GAP * 0.5] * 3 + [0.0]))
    alpha = P.mixing_weights(theta, cfg)
    assert alpha.argmax() == 3 and alpha[-1] > 0.9 and (alpha[:-1] > 0).all()


# --------------------------------------------------------------------------- bad arguments


def test_projection_bad_arguments():
    theta = torch.randn(3)
    with pytest.raises(ValueError, match="method"):
        P.project_simplex(theta, method="bisect")
    for eps in (-0.1, 1.0, 1.5, True, "0.1"):
        with pytest.raises(ValueError, match="epsilon"):
            P.project_floored_simplex(theta, eps)
    with pytest.raises(TypeError, match="floating"):
        P.project_simplex(torch.arange(3))
    with pytest.raises(ValueError, match="non-empty"):
        P.project_simplex(torch.zeros(2, 0))
    with pytest.raises(ValueError, match="non-empty"):
        P.project_simplex(torch.tensor(1.0))
    with pytest.raises(TypeError, match="torch.Tensor"):
        P.project_simplex([0.0, 1.0])
    for t in (0.0, -1.0):
        with pytest.raises(ValueError, match="temperature"):
            P.softmax(theta, t)
        with pytest.raises(ValueError, match="temperature"):
            P.gumbel_softmax(torch.softmax(theta, -1), temperature=t)


def test_fraction_strategy_reference_sanity():
    """The reference itself: a hand-worked example (guards the tests above)."""
    ref, tau = sparsemax_exact([fractions.Fraction(1, 2), 0, fractions.Fraction(3, 2)])
    assert tau == sympy.Rational(1, 2) and ref == [0, 0, 1]
    ref, tau = sparsemax_exact([sympy.Rational(1, 3), sympy.Rational(1, 2), 0])
    assert tau == sympy.Rational(-1, 18)
    assert ref == [sympy.Rational(7, 18), sympy.Rational(10, 18), sympy.Rational(1, 18)]
    alpha, _, _ = floored_exact([1, 0, 0], sympy.Rational(3, 10))
    assert alpha == [sympy.Rational(7, 10), 0, sympy.Rational(3, 10)]
