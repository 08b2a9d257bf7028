"""Several processes, one run: ``torchrun --nproc_per_node N -m deft_clean detect|train ...``.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK (and the rendezvous variables); with WORLD_SIZE > 1 the
process group is initialised from them (NCCL on GPU, gloo on CPU) and each rank uses cuda:LOCAL_RANK.
Training shards each epoch's order by rank and averages gradients (DistributedDataParallel, in
:mod:`deft_clean.run.engine`); scoring shards samples by rank and
gathers the arrays so that every sample is scored exactly once. Only rank 0 reports and writes files.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import UsageError


@dataclass(frozen=True)
class Dist:
    """Where this process sits in the run; ``world == 1`` is the ordinary single-process case."""

    rank: int = 0  # global rank
    world: int = 1  # number of processes
    local_rank: int = 0  # rank on this machine (picks the GPU)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def shard(self, order: Sequence[int]) -> list[int]:
        """This rank's part of an epoch order, padded by wrapping so that every rank gets as many steps
        (as DistributedSampler does); with one process, the order itself."""
        if not self.active:
            return list(order)
        per_rank = -(-len(order) // self.world)
        padded = list(order) + list(order[: per_rank * self.world - len(order)])
        return padded[self.rank :: self.world]

    def sum(self, values: Sequence[float], device: torch.device) -> list[float]:
        """Element-wise sum over ranks of a few numbers (loss sums, counts)."""
        if not self.active:
            return list(values)
        tensor = torch.tensor(list(values), dtype=torch.float64, device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.tolist()

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when any rank says True (e.g. a signal arrived at one of them)."""
        if not self.active:
            return flag
        tensor = torch.tensor([int(flag)], device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return bool(tensor.item())

    def all_gather(self, value: object) -> list[object]:
        """Every rank's ``value``, in rank order, on every rank (pickled; for per-rank score arrays)."""
        if not self.active:
            return [value]
        gathered: list[object] = [None] * self.world
        dist.all_gather_object(gathered, value)
        return gathered

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def device_for(dist_: Dist, requested: torch.device) -> torch.device:
    """Each rank's device: cuda:LOCAL_RANK when the run is on GPU, else the requested device."""
    if dist_.active and requested.type == "cuda":
        device = torch.device("cuda", dist_.local_rank)
        torch.cuda.set_device(device)  # NCCL and all_gather_object use the current device
        return device
    return requested


@contextlib.contextmanager
def process_group(device_request: str) -> Iterator[Dist]:
    """Join the torchrun process group when WORLD_SIZE > 1 (left again on exit); else a 1-process Dist."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield Dist()
        return
    try:
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    except KeyError:
        raise UsageError("WORLD_SIZE > 1 but RANK is not set; launch with torchrun") from None
    if dist.is_initialized():  # the caller manages the group
        yield Dist(dist.get_rank(), dist.get_world_size(), local_rank)
        return
    on_gpu = device_request.startswith("cuda") or (device_request == "auto" and torch.cuda.is_available())
    backend = "nccl" if on_gpu else "gloo"
    if on_gpu:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend)  # env:// rendezvous from torchrun's variables
    try:
        yield Dist(rank, world, local_rank)
    finally:
        dist.destroy_process_group()
