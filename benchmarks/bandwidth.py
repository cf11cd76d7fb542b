"""1. The limit: the machine's streaming bandwidth, STREAM-style, on torch tensors.

Three kernels over float32 vectors of ``size_mb`` each, written into
preallocated outputs (``out=``), so no allocation or page fault is timed:

    copy   c = a          reads 1 vector, writes 1
    add    c = a + b      reads 2, writes 1
    triad  a = b + s * c  reads 2, writes 1

Bytes are counted the way the mixing benchmark counts them: every vector read
once and every vector written once (``gb_s``). Most CPUs also read a line
before writing it (write-allocate); ``gb_s_write_allocate`` counts each write
twice. The limit is the best of the three kernels counting writes once. The
write-allocate limit is the best of add and triad only: ``copy_`` of large
vectors goes through ``memcpy``, which uses non-temporal stores that skip the
write-allocate read, so counting its writes twice would overstate it.
"""

from __future__ import annotations

import torch

from .timing import interleaved

#: kernel -> (vectors read, vectors written)
TRAFFIC = {"copy": (1, 1), "add": (2, 1), "triad": (2, 1)}
#: kernels that write with ordinary (write-allocating) stores
WRITE_ALLOCATING = ("add", "triad")


class Stream:
    """The three kernels over preallocated float32 vectors of ``size_mb`` each.

    ``fns`` maps ``"stream_copy"`` etc. to zero-argument callables, so they can join
    any interleaved group: the mixing benchmark times them in the same rounds as
    the mixing variants and takes its limit from there (the bandwidth a machine
    gives a process drifts over minutes on shared hosts).
    """

    PREFIX = "stream_"

    def __init__(self, size_mb: float) -> None:
        n = int(size_mb * 2**20) // 4
        a, b, c = (torch.rand(n, dtype=torch.float32) for _ in range(3))
        scalar = 3.0
        self.size_mb = size_mb
        self.vector_bytes = n * 4
        self.fns = {
            self.PREFIX + "copy": lambda: c.copy_(a),
            self.PREFIX + "add": lambda: torch.add(a, b, out=c),
            self.PREFIX + "triad": lambda: torch.add(b, c, alpha=scalar, out=a),
        }

    def summarize(self, timings: dict) -> dict:
        """The table and the limits from the timings of this stream's kernels (other names ignored)."""
        table = {}
        for key, timing in timings.items():
            if not key.startswith(self.PREFIX):
                continue
            name = key.removeprefix(self.PREFIX)
            reads, writes = TRAFFIC[name]
            moved = (reads + writes) * self.vector_bytes
            table[name] = {
                "time_s": timing.median_s,
                "bytes": moved,
                "gb_s": moved / timing.median_s / 1e9,
                "gb_s_write_allocate": (moved + writes * self.vector_bytes) / timing.median_s / 1e9,
                "timing": timing.to_dict(),
            }
        best = max(table, key=lambda k: table[k]["gb_s"])
        best_wa = max(WRITE_ALLOCATING, key=lambda k: table[k]["gb_s_write_allocate"])
        return {
            "vector_mb": self.size_mb,
            "bytes_counting": (
                "each vector read once and written once; write_allocate: each write counted twice "
                "(limit from add/triad only: copy's memcpy uses non-temporal stores)"
            ),
            "kernels": table,
            "limit_gb_s": table[best]["gb_s"],
            "limit_kernel": best,
            "limit_gb_s_write_allocate": table[best_wa]["gb_s_write_allocate"],
            "limit_kernel_write_allocate": best_wa,
        }


def measure(size_mb: float, rounds: int, min_sample_s: float) -> dict:
    """Section 1 on its own: time the kernels (interleaved, median); the table and the limit."""
    stream = Stream(size_mb)
    return stream.summarize(interleaved(stream.fns, rounds=rounds, warmup=2, min_sample_s=min_sample_s))
