"""Training on several processes (GPUs or CPU cores, one machine or many) with PyTorch's own ``torch.distributed``.

Launch with torchrun; each process is one *rank* and reads its place from the environment torchrun sets
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT):

    torchrun --nproc_per_node=4 -m seqgan train --run-dir runs/a ...

``setup_from_env`` joins the process group (NCCL for CUDA tensors, gloo for CPU tensors) and returns a
``DistContext``. Without torchrun (no WORLD_SIZE, or WORLD_SIZE=1) it returns the single-process context: no
process group, and every helper below is the identity, so single-process training runs exactly the code it
always ran.

How the trainer divides the work (see ``Trainer`` in train.py):

- Split across ranks: each MLE batch (the same global batch_size as one process, cut into N parts); each
  discriminator round (every rank samples num_negatives/N negatives, takes 1/N of the positives and trains
  on batches of d_batch_size/N); each policy-gradient step (every rank samples batch_size/N sequences and
  computes their Monte-Carlo rewards). Not split: evaluation and all writing, which rank 0 does alone while
  the others wait at the end of the unit.
- Gradients are averaged by ``DistributedDataParallel`` (DDP). DDP only sees what runs inside the wrapped
  module's ``forward()``, while the generator's losses are other methods (``nll``, ``weighted_nll``, the
  scheduled-sampling loop) and the discriminator's loss adds an L2 term outside its forward. So each network is
  wrapped in an ``Objective``, whose forward takes the loss function to run: ``objective(Generator.nll, batch)``
  computes ``generator.nll(batch)`` inside DDP's forward, and the backward pass all-reduces the gradients.
  One DDP wrapper per network, whatever the loss.
- DDP *averages* gradients over ranks. A loss that is a mean over a global batch is right after averaging when
  every rank holds the same number of rows; ranks with unequal shards weight their loss by
  ``share * world_size`` (share = its rows / the global batch's rows). The policy-gradient loss is a *sum*
  over batch and time, so each rank's gradient is multiplied by ``world_size`` to make the average a sum.
- Random numbers: every rank seeds with ``config.seed`` before building the networks, so the initial weights
  are identical (DDP also broadcasts rank 0's at the start). Then the trainer keeps two streams: a *shared*
  ``torch.Generator``, a copy of the default stream at that moment, for what all ranks must agree on (the MLE
  batch order, the subset of positives a discriminator round uses); and the default torch stream, reseeded
  per rank with ``seed + rank``, for what must differ (samples, roll-outs, dropout, shuffles of a rank's own
  data). The shared stream starts where a single process's stream stands after building the networks, so MLE
  on N ranks follows the same batches as on one. Checkpoints save the shared stream in place of the default
  one; on resume each rank's own stream is seeded afresh (from seed, rank and unit), so a run resumed on
  several ranks does not repeat the uninterrupted run bit for bit (in one process it still does).
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable

import torch
import torch.distributed as torch_dist
import torch.nn as nn

from .errors import ConfigError


@dataclass(frozen=True)
class DistContext:
    """Where this process stands among the ranks. ``device`` is None in a single process (config.device decides)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device | None = None
    local_world_size: int = 1  # ranks on this machine (torchrun's LOCAL_WORLD_SIZE)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def node_devices(self, device: str) -> list[str]:
        """The devices this machine's ranks train on, given this rank's: each rank has its LOCAL_RANK's GPU."""
        if not self.distributed or not device.startswith("cuda"):
            return [device]
        return [f"cuda:{i}" for i in range(self.local_world_size)]

    @property
    def is_main(self) -> bool:
        """Rank 0: the only rank that evaluates and writes (checkpoints, metrics, status, samples, log)."""
        return self.rank == 0

    # ----- splitting work -------------------------------------------------------------------------------------
    def shard(self, rows: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous part of ``rows``; the parts differ in length by at most one."""
        return torch.tensor_split(rows, self.world_size)[self.rank] if self.distributed else rows

    def shard_size(self, n: int) -> int:
        """How many of ``n`` items ``shard`` gives this rank."""
        return n // self.world_size + (1 if self.rank < n % self.world_size else 0)

    def equal_shard(self, rows: torch.Tensor) -> torch.Tensor:
        """This rank's part of ``rows`` with every rank's part the same length (up to world_size - 1 rows dropped)."""
        k = len(rows) // self.world_size
        return rows[self.rank * k:(self.rank + 1) * k]

    def per_rank(self, n: int) -> int:
        """n / world_size rounded up: each rank's part of a count that need not be split exactly."""
        return math.ceil(n / self.world_size)

    # ----- communication --------------------------------------------------------------------------------------
    def wrap(self, module: nn.Module) -> nn.Module:
        """The module under DDP (gradients averaged over ranks in backward); the module itself in one process."""
        if not self.distributed:
            return module
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=device_ids)

    def sum(self, *values: float) -> list[float]:
        """Each number summed over all ranks, in one all-reduce; a single process gets its numbers back as they are."""
        if not self.distributed:
            return list(values)
        totals = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch_dist.all_reduce(totals)
        return totals.tolist()

    def mean(self, value: float) -> float:
        """The mean over ranks of one number."""
        return self.sum(value)[0] / self.world_size

    def sum_tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        """A new tensor: ``tensor`` summed element-wise over all ranks."""
        total = tensor.clone()
        if self.distributed:
            torch_dist.all_reduce(total)
        return total

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any rank (so that a stop request stops all ranks at once)."""
        if not self.distributed:
            return flag
        value = torch.tensor([int(flag)], device=self.device)
        torch_dist.all_reduce(value, op=torch_dist.ReduceOp.MAX)
        return bool(value.item())

    def barrier(self) -> None:
        if self.distributed:
            torch_dist.barrier(device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def close(self) -> None:
        """Leave the process group (call once, at the end of the process's work)."""
        if self.distributed and torch_dist.is_initialized():
            self.barrier()  # no rank tears the group down while another still uses it
            torch_dist.destroy_process_group()

    def exit(self, status: int = 0) -> None:
        """End a rank's process without the interpreter's finalization, after ``close``: on CPU, gloo's worker
        threads can still hold objects that finalization frees, and about one exit in five here then aborted
        ("terminate called without an active exception", SIGABRT) after the run had finished and saved."""
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


SINGLE = DistContext()


def setup_from_env(device: str = "auto") -> DistContext:
    """Join the process group torchrun describes in the environment, or return ``SINGLE`` without torchrun.

    ``device``: "auto" (CUDA when available, else CPU), "cpu", or "cuda" / "cuda:N" (any index means the GPU
    of this rank's LOCAL_RANK: torchrun starts one process per GPU).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return SINGLE
    if not torch_dist.is_available():
        raise ConfigError("this PyTorch build has no torch.distributed; run without torchrun")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    kind = device.split(":")[0]
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} was asked for but CUDA is not available here")
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"local rank {local_rank} needs GPU cuda:{local_rank}, but this machine has "
                              f"{torch.cuda.device_count()}: start at most that many processes per node")
        on = torch.device("cuda", local_rank)
        torch.cuda.set_device(on)
        backend = "nccl"
    elif kind == "cpu":
        on, backend = torch.device("cpu"), "gloo"
    else:
        raise ConfigError(f"device {device!r} cannot train on several ranks; use cpu or cuda")
    # Ranks wait in a collective while rank 0 alone prepares a corpus or evaluates and checkpoints; NCCL's own
    # limit (10 minutes) would abort them all during a long one. SEQGAN_DIST_TIMEOUT_MINUTES to change.
    minutes = os.environ.get("SEQGAN_DIST_TIMEOUT_MINUTES", "120")
    try:
        timeout = timedelta(minutes=float(minutes))
    except ValueError:
        raise ConfigError(f"SEQGAN_DIST_TIMEOUT_MINUTES must be a number of minutes (got {minutes!r})") from None
    torch_dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timeout)  # MASTER_ADDR/PORT: env://
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", 1))  # torchrun sets it; other launchers may not
    return DistContext(rank, world_size, local_rank, on, local_world_size)


class Objective(nn.Module):
    """Runs a loss of ``network`` inside ``forward()``, the only method DDP hooks.

    ``objective(Generator.nll, batch)`` returns ``network.nll(batch)``; wrapped by ``DistContext.wrap``, its
    backward pass averages the network's gradients over ranks.
    """

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, loss_fn: Callable, *args):
        return loss_fn(self.network, *args)
