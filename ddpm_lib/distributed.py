"""Data-parallel training over several processes, with PyTorch's own engine.

``torchrun --nproc_per_node N -m ddpm_lib train ...`` starts N copies of the
training command; each finds its place from the variables torchrun sets
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) and :func:`setup` joins them into one
process group (gloo on CPUs, NCCL on GPUs). :func:`ddpm_lib.training.train`
then runs one replica of the model per process, wrapped in
``torch.nn.parallel.DistributedDataParallel``, which averages the gradients of
all replicas (an all-reduce) before every optimizer step, so the replicas stay
identical.

How the work is split (the part DistributedSampler does for a data loader):
every process draws the *whole* global batch of the step from the same seeded
generators (data order, t, eps), exactly as a single process would, and keeps
its own slice (:func:`shard`). A run on N processes therefore computes the same
steps as a run on one, up to the rounding of the averaged gradients, and a run
can resume on another number of processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job: rank ``rank`` of ``world_size`` processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs, shows progress and writes files."""
        return self.rank == 0


def from_env() -> DistInfo:
    """This process's place, from the variables torchrun sets (a single process without them)."""
    try:
        return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                        int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError as e:
        raise ValueError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers (torchrun sets them): {e}") from None


def setup(device: torch.device, timeout_s: float = DEFAULT_TIMEOUT_S) -> DistInfo:
    """Join the process group torchrun prepared, once; a no-op for a single process.

    ``timeout_s`` bounds every collective operation: if a process dies, the
    others fail after at most that long instead of waiting forever (and
    torchrun stops the job and names the rank that failed).
    """
    info = from_env()
    if not info.enabled or dist.is_initialized():
        return info
    if timeout_s <= 0:
        raise ValueError(f"the distributed timeout must be above 0 seconds, got {timeout_s}")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return info


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def shard(batch: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """This process's contiguous slice of a global batch (its length must divide by the world size)."""
    if not info.enabled:
        return batch
    per_rank = len(batch) // info.world_size
    return batch[info.rank * per_rank:(info.rank + 1) * per_rank]


def all_reduce(values: list[float], info: DistInfo, op: str = "sum") -> list[float]:
    """Element-wise ``"sum"`` or ``"max"`` of ``values`` over all processes (the values themselves for one)."""
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return t.tolist()


def broadcast(obj, info: DistInfo, src: int = 0):
    """Rank ``src``'s ``obj`` on every process (any picklable object)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
