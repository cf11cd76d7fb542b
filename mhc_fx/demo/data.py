"""Real text that ships with every Python: the standard library's own source files.

Byte-level (vocabulary 256), split into train and validation *by file*, deterministically
(a stable hash of each file's relative path), so no file is in both splits.
"""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path

import torch


def stdlib_files(limit_bytes: int | None = None) -> list[Path]:
    """The standard library's top-level ``.py`` files, sorted by name."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py") if p.is_file())
    if not files:
        raise FileNotFoundError(f"no .py files found in the standard library at {root}")
    return files


def _in_validation(path: Path, fraction: float) -> bool:
    digest = hashlib.sha256(path.name.encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < fraction


def load_splits(max_bytes: int = 4_000_000, val_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) as uint8 byte tensors, each at most ``max_bytes`` long."""
    train, val = bytearray(), bytearray()
    for path in stdlib_files():
        target = val if _in_validation(path, val_fraction) else train
        if len(target) < max_bytes:
            target.extend(path.read_bytes()[: max_bytes - len(target)])
    if not train or not val:
        raise RuntimeError("the standard-library split is empty; raise max_bytes or val_fraction")
    return torch.frombuffer(train, dtype=torch.uint8), torch.frombuffer(val, dtype=torch.uint8)


def batches(data: torch.Tensor, batch: int, length: int, generator: torch.Generator):
    """Endless random (input, target) windows of ``length`` bytes, targets shifted by one."""
    data = data.long()
    high = len(data) - length - 1
    if high <= 0:
        raise ValueError(f"the data ({len(data)} bytes) is shorter than one window of {length + 1}")
    while True:
        starts = torch.randint(0, high, (batch,), generator=generator)
        x = torch.stack([data[s : s + length] for s in starts.tolist()])
        y = torch.stack([data[s + 1 : s + 1 + length] for s in starts.tolist()])
        yield x, y
