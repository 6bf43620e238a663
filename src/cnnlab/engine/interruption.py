"""Stopping a fit (signals, failures a user can act on) and resuming one: checkpoint state, the mid-epoch position."""

from __future__ import annotations

import signal
from pathlib import Path

from cnnlab import __version__
from cnnlab.engine.callbacks import NOTHING_KEPT
from cnnlab.config.migrate import CONFIG_VERSION, CONFIG_VERSION_KEY
from cnnlab.engine.checkpoint import FORMAT_VERSION, RAW_WEIGHTS, config_hash
from cnnlab.engine.safety import StopSignals, disk_message, is_out_of_memory, out_of_memory_message
from cnnlab.engine.seeding import rng_state, set_rng_state
from cnnlab.engine.task import TrainLoader
from cnnlab.errors import ConfigError, RunError, TrainingStopped


class StopAndResume:
    """The Trainer's stops and resume points (cnnlab.engine.trainer.Trainer inherits it).

    Checkpoint files are the business of `trainer.checkpoints` (cnnlab.engine.callbacks.CheckpointKeeper, handed
    to the Trainer by whoever builds it): where the resume point is, writing one mid-epoch, waiting for the
    writes, and what a failed run leaves. Without one, a stop writes nothing.
    """

    def kept(self) -> str:
        """What a failed run leaves to resume from, for an error message."""
        return self.checkpoints.kept() if self.checkpoints is not None else NOTHING_KEPT

    def _raise_as_run_error(self, error: BaseException, train: TrainLoader) -> None:
        """Out of memory and a full disk become a RunError with what to do; other errors pass unchanged."""
        if isinstance(error, (RunError, TrainingStopped)):
            return
        if isinstance(error, OSError) and error.errno is not None:
            raise RunError(disk_message(error.filename or self.context.run_dir, error, self.kept())) from error
        if isinstance(error, RuntimeError) and is_out_of_memory(error):
            where = f"training epoch {self.epoch + 1}"
            message = out_of_memory_message(where, train.batch_size, self.options.precision, self.kept())
            raise RunError(message) from error

    def signals_requested(self) -> bool:
        """A stop signal reached this process."""
        signals = getattr(self, "_signals", None)
        return signals is not None and signals.requested is not None

    def _stop_requested(self, signals: StopSignals) -> bool:
        """Whether to stop after this optimizer step: under DDP only when every process agrees (the vote taken in
        _agree_on_step), so all stop after the same step; a single process stops on its own signal."""
        if self.dist.enabled:
            return self.stop_agreed
        return signals.requested is not None

    def _stop_after_epoch(self, epoch: int, signals: StopSignals) -> None:
        """Stop on a signal that arrived during validation: the epoch's checkpoint is the place to resume."""
        stop = self.dist.any(signals.requested is not None)[0] if self.dist.enabled else signals.requested
        if stop:
            signum = self._agreed_signal(signals)
            if self.checkpoints is not None:
                self.checkpoints.wait()
            self.dist.barrier()  # every process stops once rank 0's checkpoint is on disk
            raise self._stopped(signum, f"after epoch {epoch}", self._resume_path())

    def _agreed_signal(self, signals: StopSignals) -> int:
        """The signal every process reports: the lowest that reached any of them (one gather, at the stop)."""
        if not self.dist.enabled:
            return signals.requested
        got = [s for s in self.dist.gather_objects(signals.requested) if s is not None]
        return min(got) if got else int(signal.SIGTERM)

    def _resume_path(self) -> Path | None:
        """Where the resume point is (rank 0 writes it; every process names the same path)."""
        return self.checkpoints.resume_path if self.checkpoints is not None else None

    def _stop_mid_epoch(self, train: TrainLoader, epoch: int, seconds: float, signum: int | None) -> None:
        """Write last.ckpt at this step (synchronously) and stop; resuming continues this epoch here.

        Under DDP every process stops after the same step: rank 0 writes one checkpoint holding every process's
        loader position and random state (a resume with the same world size continues each exactly) and the
        running sums of all processes; the others wait until it is on disk, then stop too."""
        own = {"loader": train.state_dict(), "rng": rng_state()}
        ranks = self.dist.gather_objects(own) if self.dist.enabled else None
        signum = self._agreed_signal(self._signals) if self.dist.enabled else signum
        self.tracker.all_reduce(self.dist)
        state = self.state_dict()
        state["partial"] = {"epoch": epoch, "loader": own["loader"], "seconds": seconds, "rng": own["rng"],
                            "tracker": self.tracker.state_dict()}
        if ranks is not None:
            state["partial"].update(ranks=ranks, world_size=self.dist.world_size)
        path = self.checkpoints.save_resume_point(state) if self.checkpoints is not None else None
        self.dist.barrier()
        where = f"at epoch {epoch}, step {state['partial']['loader']['batches']}"
        raise self._stopped(signum, where, path)

    def _own_partial(self, partial: dict) -> tuple[dict, dict]:
        """This process's loader position and random state in a mid-epoch checkpoint (rank 0 saved every
        process's). Its shard of the epoch depends on the number of processes, so only the same number can
        continue it; an end-of-epoch checkpoint resumes with any."""
        saved_world = int(partial.get("world_size", 1))
        if saved_world != self.dist.world_size:
            raise ConfigError(
                f"the checkpoint was written mid-epoch {partial['epoch']} by {saved_world} process(es), and each "
                f"process's share of an epoch depends on their number: resume it with {saved_world} "
                f"({'torchrun --nproc_per_node=' + str(saved_world) if saved_world > 1 else 'a single process'}). "
                f"Checkpoints written at the end of an epoch resume with any number of processes")
        own = partial["ranks"][self.dist.rank] if "ranks" in partial else partial
        return own["loader"], own["rng"]

    def _stopped(self, signum: int, where: str, path: Path | None) -> TrainingStopped:
        name = signal.Signals(signum).name
        if path is None:
            return TrainingStopped(f"stopped by {name} {where}; no checkpoint written "
                                   f"(trainer.checkpoint.save_last=false)", signum)
        what = f"stopped by {name} {where}; checkpoint written to {path}"
        if self.dist.enabled:
            return TrainingStopped(what, signum, f"Continue with the same launch ({self.dist.world_size} processes) "
                                                 f"and trainer.resume={self.context.run_dir}, e.g. torchrun "
                                                 f"--nproc_per_node={self.dist.world_size} -m cnnlab.train "
                                                 f"trainer.resume={self.context.run_dir}")
        return TrainingStopped(what, signum, f"Continue with: cnnlab-train trainer.resume={self.context.run_dir}")

    # ---- checkpoints ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """What a checkpoint holds. "model" is always the weights validated last: with an active average
        (trainer.ema / trainer.swa) the averaged ones, and then "raw_model" holds the training weights resume
        continues from (cnnlab-eval, -predict and fine-tuning read "model")."""
        task = self.task
        state = {
            "format_version": FORMAT_VERSION,
            "cnnlab_version": __version__,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "model": task.model.state_dict(),
            "optimizer": task.optimizer.state_dict(),
            "schedule": task.schedule.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "monitored": task.monitored.state_dict(),
            "val_acc_best": self.val_acc_best,
            "history": self.history,
            "rng": rng_state(),
            "nonfinite_steps": self.nonfinite_steps,
            "world_size": self.dist.world_size,
            "config": self.context.config,
            "config_hash": config_hash(self.context.config),
            CONFIG_VERSION_KEY: CONFIG_VERSION,
        }
        average = task.average
        if average is not None:
            state["average"] = average.state_dict()
            if average.active:
                state[RAW_WEIGHTS] = state["model"]
                state["model"] = average.module.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Everything but the model weights (the raw ones, loaded and checked by the caller) to continue a run."""
        task = self.task
        task.optimizer.load_state_dict(state["optimizer"])
        task.schedule.load_state_dict(state["schedule"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        task.monitored.load_state_dict(state["monitored"])
        self.epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        self.history = list(state.get("history", []))
        self.val_acc_best = state.get("val_acc_best")
        self.nonfinite_steps = int(state.get("nonfinite_steps", 0))
        self.partial = state.get("partial")
        if self.partial is not None:
            self.partial.setdefault("world_size", int(state.get("world_size", 1)))
            self._own_partial(self.partial)  # refuse another number of processes now, before training starts
        if task.average is not None:  # after the optimizer: SWALR continues from the restored rates
            task.average.load_state_dict(state.get("average"), state["model"] if RAW_WEIGHTS in state else None)
        set_rng_state(state["rng"])

