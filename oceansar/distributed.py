"""torch.distributed in one place: joining the torchrun process group, this process's rank, reductions.

The same code runs as one process (no group: every call below is the identity) and under torchrun (WORLD_SIZE >
1: NCCL on CUDA, gloo on CPU). Scale-out is torchrun's job; nothing here launches processes.
"""

import os

import torch
import torch.distributed as dist

from .errors import UserError

# gloo's words when another process of the group died
PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "connection closed")


def setup(device_choice):
    """(rank, world, device): joins the torchrun process group when WORLD_SIZE > 1.

    device_choice: "auto" (CUDA when present), "cuda" (UserError without one) or "cpu"."""
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    if device_choice == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device=cuda but no CUDA device is available")
    use_cuda = device_choice == "cuda" or (device_choice == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return rank, world, device


def rank_world():
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def is_main():
    return rank_world()[0] == 0


def all_reduce_(t, op=None):
    """Sum (or `op`) of t over all ranks, in place."""
    if dist.is_initialized():
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t


def all_reduce_mean(t):
    if dist.is_initialized():
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return t


def barrier():
    if dist.is_initialized():
        dist.barrier()


def lost_peer(error):
    """A UserError for a RuntimeError that says another process of the group died, else None."""
    if not (dist.is_initialized() and any(words in str(error) for words in PEER_LOST)):
        return None
    return UserError(f"rank {dist.get_rank()} of {dist.get_world_size()}: lost contact with another process of the "
                     f"group ({str(error).splitlines()[0][:160]}); a peer rank died or was killed, its own output "
                     f"says why; rerun to resume from the last checkpoint")


def shutdown():
    if dist.is_initialized():
        dist.destroy_process_group()
