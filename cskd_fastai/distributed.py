"""Multi-process training through fastai's distributed support (`learn.distrib_ctx` / `DistributedTrainer`).

Launch one process per GPU with any of

    cskd-fastai train RECIPE --distributed            # relaunches itself under torchrun, one process per GPU
    torchrun --nproc_per_node N -m cskd_fastai train RECIPE
    accelerate launch -m cskd_fastai train RECIPE

Each process (rank) trains the same recipe; fastai wraps the model in `DistributedDataParallel` (through accelerate)
and every loader in a `DistributedDL`, which gives each rank its own slice of the epoch's shuffled index list.
`PairedDL` pairs inside `create_batches`, i.e. *after* that per-rank slice, so each rank draws same-class partners
for its own anchors (from the whole training set). A step therefore sees `world_size x bs` anchors (plus as many
partners). BatchNorm layers become `SyncBatchNorm` on CUDA, as fastai sets it (PyTorch's SyncBatchNorm has no CPU
kernel, so CPU/gloo runs keep per-rank BatchNorm, with rank 0's running statistics broadcast by DDP).

Per-epoch validation metrics are gathered across ranks by `DistributedDL.to_detach` (and un-padded) before the
metrics see them; every KD callback's per-epoch training statistics sum themselves across ranks
(`callbacks.base.KDCallback`), and `SyncBuffers` gives every rank rank 0's BatchNorm statistics before validation. Only rank 0
writes the run directory (history, checkpoints, final evaluation, export); the other ranks wait for it.

On CPU the process group uses gloo: fastai's `DistributedDL._broadcast` moves the index list to CUDA (NCCL only
takes CUDA tensors), so `patch_broadcast` makes it keep CPU tensors whenever the backend is not NCCL.
"""
from __future__ import annotations

import atexit
import os
import socket
import sys
from contextlib import contextmanager
from datetime import timedelta
from typing import Optional

import torch
import torch.distributed as dist
from fastai.callback.core import Callback
from fastai.distributed import DistributedDL
from fastai.torch_core import num_distrib, rank_distrib
from torch import nn

__all__ = ["world_size", "rank", "is_main", "is_distributed", "init_distributed", "barrier", "local_only", "local_device",
           "patch_broadcast", "SyncBuffers", "distrib_ctx", "unwrap", "revert_sync_batchnorm", "launch_command",
           "free_port", "LAUNCHER_ENV"]

# Environment variables a launcher (torchrun, accelerate launch) sets in every process it starts
LAUNCHER_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK")


def world_size() -> int: return max(num_distrib(), 1)
def rank() -> int: return rank_distrib()
def is_main() -> bool: return rank_distrib() == 0
def is_distributed() -> bool: return num_distrib() > 1
def local_rank() -> int: return int(os.environ.get("LOCAL_RANK", rank_distrib()))


def local_device() -> torch.device:
    "This process's device: its own GPU (LOCAL_RANK) under CUDA, else the CPU."
    if torch.cuda.is_available(): return torch.device("cuda", local_rank() if is_distributed() else torch.cuda.current_device())
    return torch.device("cpu")


# ---- fastai's DistributedDL on gloo -------------------------------------------------------------------
_orig_broadcast = DistributedDL._broadcast


def _broadcast_any_backend(self, t, rank):
    "`DistributedDL._broadcast` that keeps the index list on the CPU unless the backend is NCCL."
    if dist.get_backend() == "nccl": return _orig_broadcast(self, t, rank)
    t = torch.as_tensor(t, dtype=torch.long)
    dist.broadcast(t, rank)
    return t.tolist()


def patch_broadcast() -> None:
    "Make fastai's `DistributedDL` work with gloo (CPU) too; with NCCL it behaves exactly as before."
    DistributedDL._broadcast = _broadcast_any_backend


def init_distributed(timeout_min: float = 60) -> bool:
    "Join the process group a launcher described in the environment (NCCL on CUDA, gloo on CPU); False if none."
    if not is_distributed(): return False
    patch_broadcast()
    if dist.is_initialized(): return True
    cuda = torch.cuda.is_available()
    if cuda: torch.cuda.set_device(local_rank())
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    dist.init_process_group("nccl" if cuda else "gloo", init_method="env://", timeout=timedelta(minutes=timeout_min))
    # Leave the group before the interpreter tears down: a process that exits with the group alive can abort in
    # C++ ("terminate called without an active exception": a joinable gloo/store thread destroyed at exit), which
    # turned finished runs into a failed launch about one time in three (tests/test_distributed.py).
    atexit.register(_leave_group)
    return True


def _leave_group() -> None:
    if dist.is_available() and dist.is_initialized(): dist.destroy_process_group()


def barrier() -> None:
    "Wait for every rank (no-op outside distributed training)."
    if dist.is_available() and dist.is_initialized(): dist.barrier()


@contextmanager
def local_only():
    """This process alone: fastai's `to_detach` stops gathering across ranks (it reads WORLD_SIZE), so rank 0 can
    evaluate/export the final model on its own while the other ranks wait."""
    old = os.environ.get("WORLD_SIZE")
    if old is not None: os.environ["WORLD_SIZE"] = "1"
    try: yield
    finally:
        if old is not None: os.environ["WORLD_SIZE"] = old


# ---- metrics across ranks -----------------------------------------------------------------------------
class SyncBuffers(Callback):
    """Before validation, give every rank rank 0's buffers (BatchNorm running statistics). Without SyncBatchNorm
    (CPU) each rank's last no_grad forwards updated its own copy; rank 0's is the model that is saved, and the
    gathered validation metrics must be that model's. (The KD callbacks' training statistics reduce themselves.)"""
    def _on(self) -> bool: return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1

    def before_validate(self):
        if not self._on(): return
        with torch.no_grad():
            for b in unwrap(self.learn.model).buffers(): dist.broadcast(b, 0)


# ---- models -------------------------------------------------------------------------------------------
def unwrap(model: nn.Module) -> nn.Module:
    "The module inside (Distributed)DataParallel wrappers."
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)): model = model.module
    return model


def _bn_types(model: nn.Module) -> dict:
    return {name: type(m) for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and not isinstance(m, nn.SyncBatchNorm)}


def revert_sync_batchnorm(model: nn.Module, types: dict) -> nn.Module:
    "Put back the BatchNorm classes `types` ({name: class}) where `convert_sync_batchnorm` put SyncBatchNorm layers."
    for name, m in list(model.named_modules()):
        if not isinstance(m, nn.SyncBatchNorm) or name not in types or not name: continue
        bn = types[name](m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats)
        if m.affine: bn.weight, bn.bias = m.weight, m.bias                     # the same Parameters (optimizer state)
        for b in ("running_mean", "running_var", "num_batches_tracked"): setattr(bn, b, getattr(m, b))
        bn.train(m.training)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, bn)
    return model


@contextmanager
def distrib_ctx(learn, sync_bn: Optional[bool] = None):
    """fastai's `learn.distrib_ctx` when launched with several processes (nothing otherwise).

    `sync_bn` defaults to True on CUDA (fastai's default) and False on CPU, where SyncBatchNorm has no kernel.
    Afterwards `learn.model` is the plain model again, with its original BatchNorm classes (so exports and
    checkpoints do not depend on how the run was launched).
    """
    if not is_distributed():
        yield learn
        return
    init_distributed()
    cuda = torch.cuda.is_available()
    if sync_bn is None: sync_bn = cuda
    types = _bn_types(learn.model)
    kw = {} if cuda else dict(cpu=True)   # accelerate only sets up MULTI_CPU (DDP over gloo) when told cpu=True
    sync = SyncBuffers()
    learn.add_cb(sync)
    try:
        with learn.distrib_ctx(sync_bn=sync_bn, **kw): yield learn
    finally:
        learn.remove_cb(sync)
        learn.model = revert_sync_batchnorm(unwrap(learn.model), types)


# ---- launching ----------------------------------------------------------------------------------------
def free_port() -> int:
    "A TCP port that was free a moment ago on 127.0.0.1."
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(args: list[str], nproc: int, port: Optional[int] = None) -> list[str]:
    "The torchrun command that runs `python -m cskd_fastai ARGS` in `nproc` local processes."
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(nproc),
            "--master-addr", "127.0.0.1", "--master-port", str(port or free_port()), "-m", "cskd_fastai", *args]
