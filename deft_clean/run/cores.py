"""How many CPU cores this process may use, and the torch threads and DataLoader workers that fit them.

``os.cpu_count()`` is the machine's core count; a container or ``taskset`` gives the process fewer. torch's
default intra-op pool takes every core it sees and each DataLoader worker is one more busy process, so on a
2-core machine the old defaults (2 workers + a 2-thread pool) ran 138 s where one thread ran 37.5 s (a
1,000-image, 2-epoch detect). Threads + workers here never exceed the usable cores.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from pathlib import Path

MAX_WORKERS = 8  # more DataLoader workers rarely help one GPU and each holds a copy of the dataset's state
SMALL_MACHINE = 2  # at this many usable cores or fewer, decoding stays in the main process (no workers)
CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "QUOTA PERIOD" or "max PERIOD"
CFS_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")  # cgroup v1
CFS_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def cgroup_cores(cpu_max: Path = CPU_MAX) -> float | None:
    """The cgroup's CPU quota in cores (e.g. 1.5), or None when there is none or it cannot be read."""
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us, period_us = int(CFS_QUOTA.read_text()), int(CFS_PERIOD.read_text())
        if quota_us > 0 and period_us > 0:
            return quota_us / period_us
    except (OSError, ValueError):
        pass
    return None


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by the cgroup quota (rounded up), at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cores()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def plan_cpu(num_workers: int | None, threads: int | None, *, cores: int | None = None) -> tuple[int, int]:
    """(DataLoader workers, torch intra-op threads) for a run; ``None`` fills a value in from the cores.

    Defaults: no workers on a machine of ``SMALL_MACHINE`` cores or fewer (a worker would compete with the
    compute thread for the same cores), else half the cores (at most ``MAX_WORKERS``); threads = the rest.
    A value the user gave is kept as given (the other one fits around it).
    """
    cores = cores or usable_cores()
    if num_workers is None:
        if threads is not None:
            num_workers = 0 if cores <= SMALL_MACHINE else min(MAX_WORKERS, max(0, cores - threads))
        else:
            num_workers = 0 if cores <= SMALL_MACHINE else min(MAX_WORKERS, cores // 2)
    if threads is None:
        threads = max(1, cores - num_workers)
    return num_workers, threads


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` torch intra-op threads, then restore the caller's setting."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
