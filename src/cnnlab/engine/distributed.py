"""Data-parallel training across processes: who this process is, and the few collectives the engine needs.

A run is distributed when it is started by `torchrun` (which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT) or as one of several SLURM tasks of a submitit job (whose environment is turned into those
variables here, with submitit's own helper). Everything else runs as a single process, unchanged: `SINGLE`
answers every question locally and every collective below is a no-op for it.

Conventions (docs/distributed.md):
- `data.batch_size` is per process; the global batch is batch_size x processes x accumulate_grad_batches. No
  learning rate or batch size is scaled behind the user's back.
- Rank 0 writes every file (run dir, checkpoints, TensorBoard, metrics); the others log only warnings.
- Collectives on small CPU tensors and Python objects go over gloo (also in a CUDA run, whose default group is
  "cpu:gloo,cuda:nccl"), so a control message never waits for the GPU stream.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.nn as nn

from cnnlab.errors import ConfigError

log = logging.getLogger("cnnlab")

BACKENDS = ("auto", "gloo", "nccl")


@dataclass(frozen=True)
class Dist:
    """This process's place in the run: world size, global and local rank, and the backend of its gradients."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        return f"{self.world_size} processes ({self.backend})" if self.enabled else "1 process"

    # ---- collectives (no-ops in a single process) ------------------------------------------------------
    def all_reduce_sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
        return tensor

    def all_reduce_mean_(self, tensor: torch.Tensor) -> torch.Tensor:
        """In place: the mean of every process's `tensor`."""
        if self.enabled:
            torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
            tensor.div_(self.world_size)
        return tensor

    def any(self, *flags: bool) -> list[bool]:
        """Each flag OR-ed over all processes (one small all-reduce for all of them)."""
        if not self.enabled:
            return [bool(f) for f in flags]
        t = torch.tensor([int(bool(f)) for f in flags], dtype=torch.int32)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return [bool(v) for v in t.tolist()]

    def broadcast_object(self, obj):
        """Rank 0's `obj` on every process."""
        if not self.enabled:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather_objects(self, obj) -> list:
        """Every process's `obj`, in rank order, on every process."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def on_main(self, fn, *args, **kwargs):
        """Run `fn` on rank 0 only; an error it raises (a ConfigError, say) is raised on every process, so that
        all of them stop with the same message instead of the others waiting at the next collective."""
        if not self.enabled:
            return fn(*args, **kwargs)
        failure = result = None
        if self.is_main:
            try:
                result = fn(*args, **kwargs)
            except ConfigError as bad:
                failure = str(bad)
        failure = self.broadcast_object(failure)
        if failure is not None:
            raise ConfigError(failure)
        return result

    def broadcast_module_(self, module: nn.Module) -> None:
        """Rank 0's parameters and buffers into every process's copy (e.g. after rank 0 loaded a checkpoint)."""
        if not self.enabled:
            return
        with torch.no_grad():
            for tensor in module.state_dict().values():
                torch.distributed.broadcast(tensor, src=0)

    def broadcast_buffers_(self, module: nn.Module) -> None:
        """Rank 0's buffers (batch-norm running statistics) into every copy: each process updated its own
        from its own shard during the epoch; evaluation and checkpoints use rank 0's, on every process."""
        if not self.enabled:
            return
        with torch.no_grad():
            for buffer in module.buffers():
                torch.distributed.broadcast(buffer, src=0)


SINGLE = Dist()


def launched_world_size() -> int:
    """Processes the launcher started (torchrun's WORLD_SIZE; SLURM tasks of a submitit job); 1 otherwise."""
    if "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"])
    if _submitit_tasks() > 1:
        return _submitit_tasks()
    return 1


def launched_rank() -> int:
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    if _submitit_tasks() > 1:
        return int(os.environ.get("SLURM_PROCID", os.environ.get("SUBMITIT_LOCAL_GLOBALID", 0)))
    return 0


def _submitit_tasks() -> int:
    """Tasks of the submitit job this process is one of (SLURM's or submitit_local's), or 0."""
    if "SUBMITIT_EXECUTOR" not in os.environ:
        return 0
    for key in ("SLURM_NTASKS", "SUBMITIT_LOCAL_NTASKS"):
        if key in os.environ:
            return int(os.environ[key])
    return 0


def _export_submitit_env() -> None:
    """One SLURM (or submitit_local) task per GPU: submitit's helper sets what torch.distributed reads."""
    if "RANK" in os.environ or _submitit_tasks() <= 1:
        return
    from submitit.helpers import TorchDistributedEnvironment

    # keep every GPU visible: the local rank picks one (cuda:LOCAL_RANK)
    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def resolve_backend(name: str, device: torch.device) -> str:
    name = str(name).lower()
    if name not in BACKENDS:
        raise ConfigError(f"trainer.dist_backend={name!r} is not a backend; choose one of {', '.join(BACKENDS)}")
    if name == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if name == "nccl" and device.type != "cuda":
        raise ConfigError(f"trainer.dist_backend=nccl needs CUDA devices, but this run trains on {device.type} "
                          f"(trainer.device={device.type}); use trainer.dist_backend=gloo (or auto)")
    return name


def local_device(device: torch.device, local_rank: int) -> torch.device:
    """Each process of a CUDA run binds the GPU of its local rank."""
    if device.type != "cuda":
        return device
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise ConfigError(f"process with LOCAL_RANK={local_rank} has no GPU of its own: only {count} visible on "
                          f"this node; start at most {count} processes per node (torchrun --nproc_per_node)")
    if device.index is not None and device.index != local_rank:
        log.warning("trainer.device=%s ignored under distributed training: local rank %d uses cuda:%d",
                    device, local_rank, local_rank)
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def setup(device: torch.device, backend: str = "auto", timeout_s: int = 1800) -> tuple[Dist, torch.device]:
    """Join the process group when launched as several processes; returns (Dist, this process's device).

    Idempotent: a process group that exists already (a test, a second call) is used as it is.
    """
    _export_submitit_env()
    world = launched_world_size()
    if world <= 1:
        return SINGLE, device
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    chosen = resolve_backend(backend, device)
    device = local_device(device, local_rank)
    import torch.distributed as dist

    if not dist.is_initialized():
        # CPU tensors (control messages, object gathers) always over gloo; the device's tensors over `chosen`
        spec = f"cpu:gloo,cuda:{chosen}" if device.type == "cuda" else "gloo"
        dist.init_process_group(spec, timeout=datetime.timedelta(seconds=timeout_s))
    return Dist(world, rank, local_rank, chosen), device


def teardown() -> None:
    """Leave the process group (at the end of a run; torch warns at exit about one left open)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# What a collective raises when another process of the group is gone (gloo's socket errors, NCCL's watchdog).
_PEER_GONE = ("connection closed by peer", "connection reset by peer", "broken pipe", "connection refused",
              "socket closed", "nccl communicator was aborted", "nccl error")


def peer_died(error: BaseException, dist: Dist) -> bool:
    """Whether `error` is a collective failing because another process of the run died."""
    if not dist.enabled or not isinstance(error, RuntimeError):
        return False
    dist_error = getattr(torch.distributed, "DistError", None)
    text = str(error).lower()
    return (dist_error is not None and isinstance(error, dist_error)) or any(s in text for s in _PEER_GONE) \
        or ("gloo" in text and "pair" in text)


def hold_termination() -> None:
    """A peer died: torchrun now stops the other processes with SIGTERM. This one is already ending; it ignores
    that signal so that it can still say what happened and close its files."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def peer_died_message(dist: Dist, run_dir, kept: str | None = None) -> str:
    """One line for the processes left when another died: which one (if known), and what is kept."""
    from pathlib import Path

    peer = f"rank {1 - dist.rank}" if dist.world_size == 2 else "another rank"
    if kept is None:  # not rank 0: the checkpoints are rank 0's, in the shared run dir
        last = Path(run_dir) / "checkpoints" / "last.ckpt"
        kept = f"The last checkpoint, {last}, is kept." if last.is_file() else "No checkpoint had been written yet."
    return (f"a peer process of this distributed run died ({peer} of {dist.world_size}; torchrun's report says how), "
            f"so rank {dist.rank} stopped too. {kept} Continue with the same launch and trainer.resume={run_dir}")


def convert_sync_batchnorm(model: nn.Module, device: torch.device, convert: bool = True) -> nn.Module:
    """trainer.sync_batchnorm: batch statistics over the global batch instead of each process's share.
    convert=False (a single process): only the checks, the model is returned as it is."""
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        log.warning("trainer.sync_batchnorm=true, but the model has no BatchNorm layer: nothing to convert")
        return model
    if device.type != "cuda":
        raise ConfigError(f"trainer.sync_batchnorm=true needs CUDA: torch's SyncBatchNorm runs on GPUs only, and "
                          f"this run trains on {device.type}; set trainer.sync_batchnorm=false (each process then "
                          f"normalises over its own share of the batch)")
    if not convert:
        log.info("trainer.sync_batchnorm=true has no effect in a single process")
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def wrap(model: nn.Module, dist: Dist, device: torch.device) -> nn.Module:
    """The DistributedDataParallel wrapper that all-reduces gradients during backward. The trainer keeps the
    plain model for evaluation and checkpoints (their weights carry no 'module.' prefix)."""
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    # forward_sync_buffers=False: each process keeps batch-norm statistics of its own shard during the epoch;
    # the trainer broadcasts rank 0's before evaluating, so every process evaluates and saves the same model.
    return DistributedDataParallel(model, device_ids=device_ids, forward_sync_buffers=False)


def quiet_other_ranks(dist: Dist) -> None:
    """Processes other than rank 0 log warnings and errors to the console only (prefixed with their rank):
    rank 0 alone writes the run's log file."""
    if dist.is_main:
        return
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
            handler.close()
        else:
            handler.setFormatter(logging.Formatter(f"[rank {dist.rank}] %(message)s"))
    root.setLevel(logging.WARNING)
    logging.getLogger("cnnlab").setLevel(logging.WARNING)
