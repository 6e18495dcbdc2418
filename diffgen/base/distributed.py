"""Several processes (torchrun): the process group, who writes, and the exact merge of log-sum-exp partials.

Under `torchrun --nproc_per_node=N` every process reads RANK, WORLD_SIZE and LOCAL_RANK from its environment;
`init` joins the group (NCCL on CUDA, Gloo on CPU) and returns the process's device. Without those variables
everything here is the one-process case: rank 0 of 1, no communication.

The merge: a softmax-weighted mean over a set split into shards r = 1..R, each shard keeping per query its running max
m_r, normaliser l_r = sum_{i in r} exp(l_i - m_r) and weighted sum acc_r = sum_{i in r} exp(l_i - m_r) v_i, is
    M = max_r m_r,   l = sum_r exp(m_r - M) l_r,   acc = sum_r exp(m_r - M) acc_r,   mean = acc / l,
exactly the full set's softmax mean (the online log-sum-exp of flash attention, one step over shards).
"""
from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

from .util import resolve_device


def active() -> bool:
    """Whether this process belongs to a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0: the one process that writes checkpoints, artifacts and progress."""
    return rank() == 0


def init(device: str | torch.device = "auto", *, timeout_s: float = 600.0) -> torch.device:
    """Join the torchrun process group when WORLD_SIZE > 1 (NCCL when the device is CUDA, else Gloo) and return this
    process's device: cuda:LOCAL_RANK under torchrun on CUDA, else resolve_device(device)."""
    dev = resolve_device(device)
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1 or active():
        return dev
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s))
    return dev


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """The mean of x over the processes (x itself with one process); x is left unchanged."""
    if not active():
        return x
    out = x.detach().clone()
    dist.all_reduce(out)
    return out / world_size()


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    if not active():
        return x
    out = x.detach().clone()
    dist.all_reduce(out)
    return out


def all_gather(x: torch.Tensor) -> torch.Tensor:
    """[R, ...]: x of every process stacked in rank order ([1, ...] with one process)."""
    if not active():
        return x[None]
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.stack(parts)


def merge_partials(m: torch.Tensor, l: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
    """mean [B, D] from the shards' partials m [R, B], l [R, B], acc [R, B, D] (see the module docstring). A shard
    with no points (m = -inf, l = 0) contributes nothing."""
    if m.ndim != 2 or l.shape != m.shape or acc.shape[:2] != m.shape:
        raise ValueError(f"need m [R, B], l [R, B], acc [R, B, D]; got {tuple(m.shape)}, {tuple(l.shape)}, "
                         f"{tuple(acc.shape)}")
    top = m.max(0).values  # [B]
    scale = torch.where(torch.isneginf(m), torch.zeros_like(m), (m - top).exp())  # exp(m_r - M), 0 for empty shards
    return (scale[..., None] * acc).sum(0) / (scale * l).sum(0)[:, None]


def merge_across_ranks(m: torch.Tensor, l: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
    """mean [B, D] over the union of every process's shard, from this process's partials m [B], l [B], acc [B, D]:
    one all-gather of the three tensors, then merge_partials (every process gets the same result)."""
    return merge_partials(all_gather(m), all_gather(l), all_gather(acc))
