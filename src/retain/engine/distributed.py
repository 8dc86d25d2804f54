"""Training on several processes: ``torch.distributed`` as ``torchrun`` starts it.

``retain run CONFIG --nproc N`` (or ``torchrun --nproc-per-node N -m retain run CONFIG``) runs
one process per rank. Every rank holds the whole stream; what is split is the work:

- **steps**: the epoch's shuffled order is the same on every rank (one shared generator) and
  each global batch of ``training.batch_size`` rows is dealt out, rank ``r`` taking rows
  ``r, r + N, ...``. The model is wrapped in ``DistributedDataParallel``, which averages the
  gradients, so a step is the step one process takes on the whole global batch (same global
  batch, same learning rate). A final batch with fewer rows than ranks is skipped; when a batch does
  not divide evenly, each rank's mean counts the same, so rows of the smaller shares weigh a little more.
- **replay memories**: replicated. Every random choice (which rows a memory keeps, which it
  replays) draws from the shared generator, so every rank keeps the same, class-balanced memory
  one process would keep; a step's replayed rows are drawn for the global batch and dealt out
  like the incoming ones.
- **importances** (EWC's Fisher, MAS) are computed on each rank's share of the rows and summed
  across ranks; penalties and gradient clipping act on the averaged gradients, so they agree.
- **evaluation, reports, progress bars, saves**: rank 0 (``is_main``).

Backends: gloo on the CPU, NCCL on GPUs. Strategies whose hooks take gradient passes of their
own (GEM, A-GEM, MIR) or learn from single steps' rows (stream-updated memories) are refused:
``Strategy.distributed`` says which may run here.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist
from torch import Tensor

from retain.strategies.base import Strategy
from retain.strategies.contract import Ranks

TIMEOUT = datetime.timedelta(minutes=5)  # a rank that died leaves the others waiting this long at most


def all_gather_rows(ranks: Ranks, part: Tensor, total: int) -> Tensor:
    """The rows every rank computed for its ``ranks.take`` share of ``total`` rows, put back in order."""
    if ranks.world == 1:
        return part
    size = -(-total // ranks.world)
    padded = torch.zeros((size, *part.shape[1:]), dtype=part.dtype, device=part.device)
    padded[:len(part)] = part
    parts = [torch.empty_like(padded) for _ in range(ranks.world)]
    dist.all_gather(parts, padded)
    out = torch.empty((total, *part.shape[1:]), dtype=part.dtype, device=part.device)
    for r in range(ranks.world):
        out[r::ranks.world] = parts[r][:len(range(r, total, ranks.world))]
    return out


SINGLE = Ranks()


def current() -> Ranks:
    """The ranks of the process group torchrun started (one process: rank 0 of 1)."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return SINGLE


def launched() -> bool:
    """Whether torchrun started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main() -> bool:
    """Whether this process writes reports, saves and progress bars (rank 0, or the only one)."""
    return current().rank == 0


def start(device: str = "auto") -> Ranks:
    """Join the process group torchrun describes in the environment (gloo on the CPU, NCCL when
    ``device`` is CUDA); each rank takes its share of the cores for torch's threads."""
    if not launched():
        return SINGLE
    if not dist.is_initialized():
        cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        # NCCL for the GPU's gradients, gloo for the CPU tensors some steps gather (features)
        dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo", timeout=TIMEOUT)
    ranks = current()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    local = int(os.environ.get("LOCAL_WORLD_SIZE", ranks.world))
    torch.set_num_threads(max(1, cores // local))
    return ranks


def backend() -> str:
    return dist.get_backend() if dist.is_initialized() else "none"


def everyone(flag: bool) -> bool:
    """Whether ``flag`` holds on every rank."""
    if current().world == 1:
        return flag
    t = torch.tensor([int(flag)])
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def share(value: object) -> object:
    """Rank 0's ``value``, on every rank (one process: ``value``)."""
    if current().world == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def problem(strategies: list[Strategy], modes: list[str]) -> str | None:
    """Why these strategies (of one method) or modes cannot train across ranks, or None."""
    if modes != ["offline"]:
        return "online and hybrid modes learn in one process; run mode: offline across ranks"
    for s in strategies:
        if not s.supports_distributed():
            return f"{s.name} does not train across ranks: {s.distributed_hint}; run it in one process"
    return None


def stop() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if current().world > 1:
        dist.barrier()
