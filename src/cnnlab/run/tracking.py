"""A training run's MLflow tracking (logger.mlflow): where it goes, what the run is called, its params and tags,
and which group's parent run it belongs to. The sending is cnnlab.engine.mlflow_tracking's."""

from __future__ import annotations

import getpass
import importlib.util
import shlex
from pathlib import Path

from cnnlab import __version__
from cnnlab.config.training_schema import Mlflow
from cnnlab.engine.mlflow_tracking import MlflowCallback, MlflowSpec, MlflowTracker, local_store
from cnnlab.errors import ConfigError
from cnnlab.run.records import read_overrides
from cnnlab.run.runinfo import flat_hparams
from cnnlab.util.masking import mask, masked_argv
from cnnlab.util.source_tree import git_commit


def check_mlflow_installed() -> None:
    """logger.mlflow.enabled=true without the mlflow package: refused before anything trains."""
    if importlib.util.find_spec("mlflow") is None:
        raise ConfigError("logger.mlflow.enabled=true (logger=mlflow) needs the mlflow package: "
                          "pip install 'cnnlab[mlflow]' (or choose logger=tensorboard)")


def sweep_group() -> Path | None:
    """The sweep dir of a Hydra multirun job (cnnlab-train -m): its runs share one MLflow parent run."""
    from hydra.core.hydra_config import HydraConfig  # loaded by every Hydra job already
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra = HydraConfig.get()
    return Path(hydra.sweep.dir) if hydra.mode == RunMode.MULTIRUN else None


def run_tags(run_dir: Path, config: dict) -> dict[str, str]:
    """What identifies the run in MLflow: the code (git commit), where its files are, how it was started."""
    tags = {"cnnlab.run_dir": str(run_dir), "cnnlab.command": shlex.join(masked_argv()),
            "cnnlab.version": __version__, "mlflow.source.type": "LOCAL",
            "mlflow.source.name": Path(masked_argv()[0]).name if masked_argv() else "cnnlab"}
    overrides = read_overrides(run_dir)
    if overrides:
        tags["cnnlab.overrides"] = " ".join(f"{k}={v}" for k, v in overrides.items())
    git = git_commit()
    if git:
        tags["mlflow.source.git.commit"] = git["commit"]
        tags["cnnlab.git_dirty"] = str(git.get("dirty", False)).lower()
    resumed = (config.get("trainer") or {}).get("resume")
    if resumed:
        tags["cnnlab.resumed_from"] = str(resumed)
    try:
        tags["mlflow.user"] = getpass.getuser()
    except (KeyError, OSError):  # no user name for this uid (a container)
        pass
    return {k: mask(v) for k, v in tags.items()}


def mlflow_callback(config: dict, settings: Mlflow, run_dir: Path, group: Path | None = None) -> MlflowCallback:
    """The callback that sends this run to MLflow. `config`: the resolved config (params: its flattened leaves,
    the run's overrides first, passwords masked); `group`: the dir whose runs are children of one parent run (a
    study's dir; by default a multirun job's sweep dir)."""
    run_dir = Path(run_dir)
    if settings.tracking_uri:
        uri, artifacts = settings.tracking_uri, None
    else:
        uri, artifacts = local_store(config["paths"]["output_root"])
    spec = MlflowSpec(tracking_uri=uri, experiment=settings.experiment, run_name=settings.run_name or run_dir.name,
                      run_dir=run_dir, params=flat_hparams(config, first=read_overrides(run_dir)),
                      tags=run_tags(run_dir, config), artifact_location=artifacts,
                      group=group if group is not None else sweep_group(),
                      log_checkpoints=settings.log_checkpoints, timeout_s=settings.timeout_s)
    return MlflowCallback(MlflowTracker(spec))
