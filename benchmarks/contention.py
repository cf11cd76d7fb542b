"""How much of the machine other processes used while we timed, and waiting for quiet.

On a shared machine, another process's burst slows every kernel that needs both
cores (a parallel region waits for its descheduled thread), by up to several
times. So before a timed group the suite waits, within a budget, until other
processes leave the CPUs mostly idle, and it records the share of CPU time they
used during the group (from /proc/stat minus this process's own time, which
includes hypervisor steal). Where /proc is missing, nothing is waited for and
the share is None.
"""

from __future__ import annotations

import time


def _machine() -> tuple[int, int] | None:
    """(busy, total) jiffies over all CPUs since boot."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already inside user
    return total - idle, total


def _own() -> int | None:
    """Jiffies this process (all its threads) and its reaped children have run."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime


class OtherShare:
    """Context manager: ``share`` = fraction of all CPU time used by other processes inside it."""

    def __enter__(self):
        self._start = (_machine(), _own())
        self.share = None
        return self

    def __exit__(self, *exc):
        (m0, o0), m1, o1 = self._start, _machine(), _own()
        if None not in (m0, o0, m1, o1) and m1[1] > m0[1]:
            self.share = max(0.0, ((m1[0] - m0[0]) - (o1 - o0)) / (m1[1] - m0[1]))
        return False


class Quiet:
    """Waits, within a total budget, for other processes to leave the CPUs idle."""

    def __init__(self, budget_s: float = 0.0, threshold: float = 0.15, window_s: float = 1.0) -> None:
        self.budget_s = budget_s
        self.threshold = threshold
        self.window_s = window_s
        self.waited_s = 0.0

    def wait(self, max_s: float = 60.0) -> float | None:
        """Sample the other processes' share in windows until it is below the threshold,
        ``max_s`` passed or the budget is spent. Returns the last share measured."""
        share = None
        deadline = time.monotonic() + min(max_s, self.budget_s - self.waited_s)
        while time.monotonic() < deadline:
            start = time.monotonic()
            with OtherShare() as s:
                time.sleep(self.window_s)
            self.waited_s += time.monotonic() - start
            share = s.share
            if share is None or share < self.threshold:
                break
        return share


#: The suite's one waiter; `run` sets its budget (0: never wait, as in --quick).
QUIET = Quiet()
