"""One training run: validate the config, build data -> model -> optimizer/schedule -> trainer, fit, test, record.

`train(cfg)` does the work of `cnnlab-train` and returns the final metrics; the command (cnnlab.cli.train) is the
Hydra entry point around it, and search trials (cnnlab-tune) and tests call it directly.
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from cnnlab.config.compose import command_line_keys, hydra_overrides
from cnnlab.config.schema import TrainConfig
from cnnlab.config.training_schema import Finetune
from cnnlab.data import build_data
from cnnlab.engine import distributed
from cnnlab.engine.devices import (check_precision, configure_backends, resolve_channels_last, resolve_device,
                                   resolve_precision)
from cnnlab.engine.averaging import SWA, SWASchedule, build_average
from cnnlab.engine.run_callbacks import (CheckpointsOfRankZero, EarlyStopping, ModelCheckpoint, ProgressDisplay,
                                         TensorBoardCallback)
from cnnlab.engine.cpu_wait import run_timing
from cnnlab.engine.checkpoint import CKPT_DIR, find_checkpoint, load_model_weights, training_weights_key
from cnnlab.engine.early_stopping import MonitoredMetric, resolve_monitor_mode
from cnnlab.engine.metrics_csv import FILE_NAME as METRICS_CSV, MetricsCSV
from cnnlab.engine.progress import Progress
from cnnlab.engine.safety import disk_message
from cnnlab.engine.task import RunContext, Task, TrainerOptions
from cnnlab.engine.tensorboard import TensorBoardLogger
from cnnlab.engine.top_k import TopK
from cnnlab.engine.stepping import optimizer_steps_per_epoch
from cnnlab.engine.trainer import Trainer
from cnnlab.errors import ConfigError, RunError, disk_full
from cnnlab.run.records import read_overrides
from cnnlab.engine.freezing import Freezer
from cnnlab.run.finetune import load_pretrained
from cnnlab.models.inspector.layer_report import LayerFailure, totals_lines
from cnnlab.models.inspector.summarize import summarize
from cnnlab.engine.losses import run_loss
from cnnlab.util.masking import masked
from cnnlab.models import build_model
from cnnlab.engine.optim import build_optimizer, build_schedule
from cnnlab.run.restore import carry_best_checkpoint, resume_config
from cnnlab.run.rundir import claim, startup_disk_message
from cnnlab.run.runinfo import environment, flat_hparams
from cnnlab.util.outpaths import write_json
from cnnlab.engine.seeding import seed_everything
from cnnlab.run.validate import TRAINING_KINDS, fit_topk, known_classes, monitor_problem, validate

log = logging.getLogger("cnnlab")


@dataclass
class Run:
    """Everything built for one training run, ready for trainer.fit."""

    cfg: DictConfig
    sections: TrainConfig  # cfg's typed sections (cnnlab.config.typed), as the builders took them
    config: dict
    run_dir: Path
    data: object
    model: object
    trainer: object
    tb: object
    n_params: int
    dist: distributed.Dist = distributed.SINGLE
    # what the trainer.precision / channels_last settings resolved to here: environment.json and metrics.json
    # record it, since `auto` can differ by machine
    resolved: dict = field(default_factory=dict)


def prepare(cfg: DictConfig, overrides: list[str] | None = None, extra_callbacks: tuple = (),
            kind: str = "train", tracking_group: Path | None = None) -> Run:
    """Validate the config, then build data -> model -> optimizer/schedule -> trainer (restored if resuming).

    Every check on user input runs here, before the first training step. `extra_callbacks` are added after the
    run's own (a search trial's pruning report, for example). `kind`: the config's schema (cnnlab.config.schema.CONFIGS)
    and what the run dir's marker records; cnnlab-doctor builds the same run as "doctor". A full disk while the
    run's first files are written (.hydra/, the model summary, the event file) is a RunError naming the file.
    `tracking_group`: the dir whose runs are children of one MLflow parent run (logger.mlflow; a study's dir),
    by default a multirun job's sweep dir.
    """
    try:
        return _prepare(cfg, overrides, extra_callbacks, kind, tracking_group)
    except OSError as bad:
        if not disk_full(bad):
            raise
        where = bad.filename or OmegaConf.select(cfg, "paths.output_dir", default=None) or "the run dir"
        raise RunError(startup_disk_message(where, bad)) from bad


def _prepare(cfg: DictConfig, overrides: list[str] | None, extra_callbacks: tuple, kind: str,
             tracking_group: Path | None) -> Run:
    own_overrides = overrides  # given by a caller that composed the config itself (a search trial)
    overrides = hydra_overrides() if overrides is None else overrides
    composed = cfg
    resume_ckpt = resume_path = None
    if OmegaConf.select(cfg, "trainer.resume", default=None):
        if OmegaConf.select(cfg, "finetune.checkpoint", default=None):
            raise ConfigError(f"trainer.resume={cfg.trainer.resume} and finetune.checkpoint="
                              f"{cfg.finetune.checkpoint} cannot be combined: resume continues a run with its own "
                              f"weights and state; finetune.checkpoint starts a new run from other weights")
        cfg, resume_ckpt, resume_path = resume_config(cfg, overrides)
    typed = validate(cfg, kind)
    mlflow = typed.logger.mlflow.enabled and kind in TRAINING_KINDS  # the doctor's runs are not tracked
    if mlflow:  # loaded only for a run that uses it, like mlflow itself
        from cnnlab.run.tracking import check_mlflow_installed, mlflow_callback
        check_mlflow_installed()
    topk_given = "trainer.topk" in command_line_keys(overrides)
    tcfg = typed.trainer.model_copy(update={"topk": fit_topk(cfg, known_classes(cfg), topk_given)})
    # Under torchrun (or SLURM tasks) join the process group; each process binds its own GPU.
    dist, device = distributed.setup(resolve_device(tcfg.device), str(tcfg.dist_backend))
    distributed.quiet_other_ranks(dist)
    config = OmegaConf.to_container(cfg, resolve=True)
    run_dir = Path(dist.broadcast_object(config["paths"]["output_dir"]))  # rank 0's: one run dir for all
    if dist.enabled:
        config["paths"]["output_dir"] = str(run_dir)
        with open_dict(cfg):
            cfg.paths.output_dir = str(run_dir)
    dist.on_main(claim, run_dir, kind, existing=typed.paths.existing_run, resuming=resume_path,
                 task_cfg=composed, overrides=own_overrides)

    exempt_from_gc()  # the imports (torch above all) left ~10^6 long-lived objects every collection would rescan

    check_precision(tcfg.precision, device)  # an explicit one this device cannot run, before the data loads
    mode = resolve_monitor_mode(tcfg.monitor, tcfg.monitor_mode)
    progress = Progress(tcfg.progress, tcfg.max_epochs, tcfg.log_every_n_steps)
    monitored = MonitoredMetric(tcfg.monitor, mode, tcfg.early_stopping.patience, tcfg.early_stopping.min_delta)
    seed_everything(typed.seed, tcfg.deterministic)
    configure_backends(device, deterministic=tcfg.deterministic, tf32=tcfg.tf32)

    # values computed from the training split (Lighting's PCA) are cached in the run dir; a resumed run's dir too
    cache_dirs = [run_dir]
    if resume_path is not None:  # run/checkpoints/last.ckpt (or run/x.ckpt) -> run
        folder = Path(resume_path).resolve().parent
        cache_dirs.append(folder.parent if folder.name == "checkpoints" else folder)
    data = build_data(typed.data, typed.seed, device, typed.augment, shard=(dist.rank, dist.world_size),
                      cache_dirs=cache_dirs)
    info = data.info
    # an image folder's classes are known only now
    tcfg = tcfg.model_copy(update={"topk": fit_topk(cfg, info.num_classes, topk_given)})
    problem = monitor_problem(cfg) if kind in TRAINING_KINDS else None  # a top-k accuracy fit_topk dropped
    if problem:
        raise ConfigError(problem)
    loss = run_loss(tcfg, typed.data.sampler, data.class_counts)
    check_world_size(dist, data, typed.data.batch_size, tcfg.accumulate_grad_batches)
    if data.found:  # e.g. an image folder's classes, a measured mean/std: saved so eval/predict rebuild the same
        with open_dict(cfg):
            for key, value in data.found.items():
                cfg.data[key] = value
        config["data"].update(data.found)
    ft = typed.finetune or Finetune()  # a config without the section fine-tunes nothing
    # Pretrained weights (model.weights, model.pretrained) only for a model whose weights no checkpoint replaces.
    model = build_model(cfg.model, info.in_channels, info.num_classes, info.input_size,
                        pretrained=resume_ckpt is None and not ft.checkpoint, checked=True)
    if resume_ckpt is not None:
        # the training weights (a checkpoint with averaged weights keeps them beside its "model")
        load_model_weights(model, resume_ckpt, resume_path, cfg.model.name, info.in_channels,
                           key=training_weights_key(resume_ckpt))
    elif ft.checkpoint:
        source, saved = find_checkpoint(ft.checkpoint, "finetune.checkpoint")
        fresh = load_pretrained(model, saved, source, cfg.model.name, info.num_classes, info.in_channels)
        log.info("fine-tuning from %s; freshly initialised: %s", source, ", ".join(fresh) or "nothing")
    if tcfg.sync_batchnorm:  # before the freezer, which holds the batch-norm layers it keeps frozen
        model = distributed.convert_sync_batchnorm(model, device, convert=dist.enabled)
    freezer = Freezer(model, ft.freeze, info.num_classes, ft.unfreeze_after_epochs)
    freezer.freeze()
    if dist.is_main:  # rank 0 writes the run's files
        log_model_summary(model, tcfg.summary, str(cfg.model.name), (info.in_channels, *info.input_size), run_dir,
                          dist)
    model = model.to(device)
    # auto measures the model (one sample's forward pass, in NCHW before the layout changes)
    precision, precision_why = resolve_precision(tcfg.precision, device, model, (info.in_channels, *info.input_size),
                                                 announce=True)
    channels_last = resolve_channels_last(tcfg.channels_last, model, device)
    if channels_last:  # the trainer hands it NHWC batches too
        model = model.to(memory_format=torch.channels_last)
    # The first optimizer imports torch._dynamo.
    optimizer = build_optimizer(cfg.optimizer, model, head=tuple(freezer.heads),
                                backbone_lr_scale=ft.backbone_lr_scale)
    exempt_from_gc()
    schedule = build_schedule(cfg.scheduler, optimizer, max_epochs=tcfg.max_epochs,
                              steps_per_epoch=optimizer_steps_per_epoch(len(data.train), tcfg.limit_train_batches,
                                                                        tcfg.accumulate_grad_batches),
                              monitor_mode=mode)
    average = build_average(tcfg, model, optimizer)  # trainer.ema / trainer.swa (cnnlab.engine.averaging)
    if isinstance(average, SWA):  # from swa.start_epoch on, SWALR sets the rate instead
        schedule = SWASchedule(schedule, average)
    if average is not None:
        log.info("averaged weights: %s; validation, the test and checkpoints use them", average.describe())
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model %s: %s parameters on %s (precision %s)", cfg.model.name, f"{n_params:,}", device, precision.name)

    tb = TensorBoardLogger(typed.logger if dist.is_main else typed.logger.model_copy(update={"enabled": False}),
                           run_dir)
    tb.graph(model, torch.zeros(1, info.in_channels, *info.input_size, device=device))
    callbacks = [TensorBoardCallback(tb, info.mean, info.std, tcfg.log_every_n_steps)] if tb.enabled else []
    # The checkpoint is submitted before the progress line reports the epoch, and early stopping decides last.
    if dist.is_main:  # the other processes write nothing and print only warnings
        top_k = tcfg.checkpoint.save_top_k
        checkpoints = ModelCheckpoint(run_dir / CKPT_DIR, tcfg.checkpoint.save_last, tcfg.checkpoint.save_best,
                                      TopK(run_dir / CKPT_DIR, top_k, tcfg.monitor, mode) if top_k else None)
        callbacks += [checkpoints, MetricsCSV(run_dir / METRICS_CSV), ProgressDisplay(progress)]
        if mlflow:  # after the files it uploads at the end are closed (teardown runs in this order)
            callbacks.append(mlflow_callback(config, typed.logger.mlflow, run_dir, tracking_group))
    else:  # the resume point rank 0 writes, named in this process's stop message
        checkpoints = CheckpointsOfRankZero(run_dir / CKPT_DIR, tcfg.checkpoint.save_last)
    if tcfg.early_stopping.enabled:
        callbacks.append(EarlyStopping(monitored))
    trainer = Trainer(Task(model, optimizer, schedule, loss, monitored, freezer, average),
                      TrainerOptions.from_config(tcfg, channels_last, precision.name),
                      RunContext(device, precision, run_dir, typed.seed, config, dist),
                      [*callbacks, *extra_callbacks], checkpoints)
    if resume_ckpt is not None:
        trainer.load_state_dict(resume_ckpt)
        if dist.is_main:
            carry_best_checkpoint(resume_path, run_dir / CKPT_DIR)
            if checkpoints.top_k is not None:
                checkpoints.top_k.continue_from(resume_ckpt.get("top_k"), resume_path, trainer.epoch)
        log.info("resumed from %s after epoch %d", resume_path, trainer.epoch)
    resolved = {"precision": {"setting": str(tcfg.precision), "chosen": precision.name, "why": precision_why},
                "channels_last": channels_last}
    return Run(cfg, typed.model_copy(update={"trainer": tcfg}), config, run_dir, data, model, trainer, tb, n_params,
               dist, resolved)


def check_world_size(dist: distributed.Dist, data, batch_size: int, accumulate: int) -> None:
    """Under DDP: say what the global batch is, and refuse more processes than the training set has batches
    (some would train on nothing but repeated padding samples)."""
    if not dist.enabled:
        return
    n = data.sizes["train"]
    batches = -(-n // batch_size)
    if batches < dist.world_size:
        raise ConfigError(f"{dist.world_size} processes but the {n} training images make only {batches} batch(es) "
                          f"of data.batch_size={batch_size} (the batch size is per process): use at most {batches} "
                          f"processes or a smaller data.batch_size")
    log.info("distributed: %s; global batch %d = data.batch_size %d per process x %d processes%s", dist.describe(),
             batch_size * dist.world_size * accumulate, batch_size, dist.world_size,
             f" x {accumulate} accumulated batches" if accumulate > 1 else "")


def log_model_summary(model, mode: str, name: str, input_shape, run_dir: Path,
                      dist: distributed.Dist = distributed.SINGLE) -> None:
    """The inspector's summary of the model `name` about to train: model_summary.txt / .json in the run dir, and
    on the console (and train.log) the whole table or, with `mode` (trainer.summary) totals, only its totals."""
    if mode == "none":
        return
    try:
        summary = summarize(model, input_shape, name=name)
    except LayerFailure as bad:  # build_model's dry run passed, so this is not expected; never fatal
        log.warning("no model summary: %s", bad)
        return
    table = summary.table()
    if dist.enabled:
        table += f"\nTrained data-parallel by {dist.describe()}: each holds a full copy of the model."
    (run_dir / "model_summary.txt").write_text(table + "\n")
    write_json({**summary.to_dict(), "world_size": dist.world_size}, run_dir / "model_summary.json")
    log.info("%s", table if mode == "full" else "\n".join(totals_lines(summary)))


def train(cfg: DictConfig, overrides: list[str] | None = None, callbacks: tuple = (),
          tracking_group: Path | None = None) -> dict:
    """Train one model as the config says; returns the final metrics (also written to metrics.json).

    callbacks: extra engine callbacks, called after the run's own at each moment. tracking_group: see prepare.
    """
    started = time.perf_counter()
    try:
        run = prepare(cfg, overrides, callbacks, tracking_group=tracking_group)
        try:
            return _fit_test_record(run, started)
        except OSError as bad:
            if bad.errno is None:
                raise
            raise RunError(disk_message(bad.filename or run.run_dir, bad, run.trainer.kept())) from bad
        except RuntimeError as bad:
            if not distributed.peer_died(bad, run.dist):
                raise
            kept = run.trainer.kept() if run.dist.is_main else None
            raise RunError(distributed.peer_died_message(run.dist, run.run_dir, kept)) from None
    finally:
        distributed.teardown()  # a distributed run leaves its process group (nothing in a single process)


def _fit_test_record(run: Run, started: float) -> dict:
    trainer, tcfg, main = run.trainer, run.cfg.trainer, run.dist.is_main
    if main:  # rank 0 writes every file of the run
        write_json({**environment(trainer.device, run.dist), **run.resolved}, run.run_dir / "environment.json")
        (run.run_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(masked(run.config)))
    try:
        trainer.fit(run.data.train, run.data.val)
        results = trainer.test(run.data.test, run.data.info.classes)
        summary = dict(results)
        summary.update({
            "val/acc_best": trainer.val_acc_best,
            "best_epoch": trainer.task.monitored.best_epoch,
            f"best_{tcfg.monitor}": trainer.task.monitored.best,
            "epochs_completed": trainer.epoch,
            "stopped_early": trainer.stopped_early,
            "params": run.n_params,
            "precision": run.resolved["precision"]["chosen"],
            "wall_time_s": time.perf_counter() - started,
            **run_timing(trainer.history),
            "run_dir": str(run.run_dir),
        })
        if run.dist.enabled:
            summary["world_size"] = run.dist.world_size
        if main:
            write_json(summary, run.run_dir / "metrics.json")
        if run.tb.enabled:  # the run's own overrides lead the HParams columns: in a sweep, what varies first
            hparams = flat_hparams(run.config, first=read_overrides(run.run_dir))
            run.tb.hparams(hparams, {k: v for k, v in summary.items()
                                     if k.startswith(("test/", "val/")) and isinstance(v, float)})
        trainer.teardown()  # closes the event file and the checkpoint writer
    except BaseException as bad:
        if distributed.peer_died(bad, run.dist):  # torchrun's SIGTERM must not cut what follows short
            distributed.hold_termination()
        # Keep what was logged so far readable and let queued checkpoint writes finish; a second failure
        # here (the same full disk) must not hide the first.
        trainer.teardown(after_error=True)
        raise
    log.info("test/loss %.4f  test/acc %.4f  (best epoch %s)  run dir: %s", summary["test/loss"], summary["test/acc"],
             summary["best_epoch"], run.run_dir)
    return summary


def exempt_from_gc() -> None:
    """Move every object alive now into the collector's permanent generation.

    Module-level objects from torch and torch._dynamo live until exit anyway; without this, each full
    collection during start-up and at interpreter shutdown walks all of them (about a second per run on
    two cores, see docs/benchmarks.md). Objects created later are collected as usual.
    """
    gc.freeze()
