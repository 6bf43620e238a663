"""Run directories: one per run, claimed atomically, never shared with another run's files.

- Default run dirs are named by time and process (`outputs/<date>/<time>_<pid>`): two runs started in the
  same second on one machine get two directories, without the user doing anything.
- Before a run writes anything, `claim` looks at the directory it was given:
  - results of another run in it (checkpoints, metrics) are refused, unless this is the very run being
    resumed, or `paths.existing_run=clear` asks to delete that run's files first;
  - a run still starting there (its marker names a live process) is refused;
  - what a run left that stopped before writing any result (a killed start-up, a crash before the first
    checkpoint) holds nothing to keep or resume: it is deleted, so the new run's files stand alone.
  Only cnnlab's own file names are ever deleted; anything else in the directory is left alone.
- The claim is a marker file created with O_EXCL: of two processes racing for one directory, one wins.
- Hydra is told not to write `.hydra/` itself (`hydra.output_subdir: null`): it would write it before any
  check could run, over the record of the run already there. `claim` writes it once the directory is ours.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import sys
import time
import uuid
from pathlib import Path

from omegaconf import OmegaConf

from cnnlab.errors import ConfigError
from cnnlab.masking import masked, masked_argv

log = logging.getLogger("cnnlab")

MARKER = ".cnnlab-run.json"
# What a run writes that is worth keeping: finding one means the directory holds another run.
RESULTS = ("checkpoints/*.ckpt", "metrics.json", "eval_metrics.json")
# What a run writes before its first result; with the results, the only names `claim` ever deletes.
START_FILES = (MARKER, ".hydra", "checkpoints", "environment.json", "config_resolved.yaml", "model_summary.txt",
               "model_summary.json", "events.out.tfevents.*", "eval_metrics.json", "metrics.json", "metrics.csv",
               "failure.json",                                  # why a sweep job or search trial did not finish
               "projector_config.pbtxt", "[0-9][0-9][0-9][0-9][0-9]",  # TensorBoard Projector files (<step>/...)
               "explain")                                       # cnnlab-explain's pictures of the earlier weights


def register_resolvers() -> None:
    """`${pid:}`: this process's id, which no other process running on this machine has. Cached like Hydra's
    `${now:...}`, so every job of a sweep resolves the same sweep dir. Pure: resolving it creates nothing
    (OmegaConf also resolves a value that an override replaces)."""
    OmegaConf.register_new_resolver("pid", lambda: str(os.getpid()), use_cache=True, replace=True)


def results_in(run_dir: Path) -> list[str]:
    """The results of a run found in `run_dir` (relative names)."""
    if not run_dir.is_dir():
        return []
    return sorted(str(p.relative_to(run_dir)) for pattern in RESULTS for p in run_dir.glob(pattern))


def _run_of(checkpoint: Path) -> Path:
    """The run dir a checkpoint file belongs to (run/checkpoints/x.ckpt or run/x.ckpt)."""
    folder = Path(checkpoint).resolve().parent
    return folder.parent if folder.name == "checkpoints" else folder


def claim(run_dir: Path, kind: str, existing: str = "refuse", resuming: Path | None = None,
          task_cfg=None, overrides: list[str] | None = None) -> None:
    """Make `run_dir` this run's own before anything is written into it (see the module docstring).

    kind: what the run is (train, eval), recorded in the marker; resuming: the checkpoint a resumed run
    continues, whose own run dir may be reused; task_cfg: the composed config, saved to .hydra/config.yaml;
    overrides: the run's own overrides when it was composed outside Hydra's job (a search trial), saved to
    .hydra/overrides.yaml instead of the Hydra job's.
    """
    run_dir = Path(run_dir)
    if resuming is not None and run_dir.is_dir() and _run_of(resuming) == run_dir.resolve():
        return  # the very run, continued in place: its marker and .hydra/ record stay as they were
    found = results_in(run_dir)
    owner = _marker(run_dir)
    if found and existing != "clear":
        raise ConfigError(
            f"{run_dir} already holds another run ({', '.join(found[:3])}); a run never mixes its files with "
            f"another's. Leave hydra.run.dir unset for a new directory, continue that run with "
            f"trainer.resume={run_dir} hydra.run.dir={run_dir}, or set paths.existing_run=clear to delete its "
            f"files first")
    if owner is not None and _running(owner):
        elsewhere = owner.get("host") != socket.gethostname()
        if not (elsewhere and existing == "clear"):  # another machine's process cannot be checked: the user may
            raise ConfigError(                       # say it is gone
                f"{run_dir} is in use by another cnnlab run (process {owner.get('pid')} on {owner.get('host')}, "
                f"started {owner.get('started')}); leave hydra.run.dir unset so that each run gets its own "
                f"directory" + ("; if that run is no longer running, set paths.existing_run=clear" if elsewhere
                                else ""))
    if _clear(run_dir):
        log.info("%s: deleted the files of %s", run_dir, "the previous run (paths.existing_run=clear)" if found
                 else "an earlier run that stopped before writing any result")
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_marker(run_dir, kind)
    _save_hydra_record(run_dir, task_cfg, overrides)


def _marker(run_dir: Path) -> dict | None:
    try:
        record = json.loads((run_dir / MARKER).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _running(owner: dict) -> bool:
    """Whether the process that wrote a marker may still be running (assumed so on another machine)."""
    if owner.get("host") != socket.gethostname():
        return True
    if owner.get("pid") == os.getpid():
        return False  # this very process, whose earlier run here stopped at start-up
    try:
        os.kill(int(owner.get("pid")), 0)
    except (ProcessLookupError, TypeError, ValueError):
        return False
    except PermissionError:
        return True
    return True


def _write_marker(run_dir: Path, kind: str) -> None:
    record = {"run_id": uuid.uuid4().hex, "kind": kind, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "host": socket.gethostname(), "pid": os.getpid(), "argv": masked_argv()}
    try:
        fd = os.open(run_dir / MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise ConfigError(f"{run_dir} was claimed by another cnnlab process at the same moment; leave "
                          f"hydra.run.dir unset so that each run gets its own directory") from None
    with os.fdopen(fd, "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")


def _log_handlers(run_dir: Path) -> list:
    """This process's logging handlers that write a file in run_dir (Hydra's `<task>.log`)."""
    return [h for h in logging.getLogger().handlers
            if getattr(h, "baseFilename", None) and Path(h.baseFilename).resolve().parent == run_dir.resolve()]


def _clear(run_dir: Path) -> bool:
    """Delete cnnlab's own files in run_dir (START_FILES); this process's log files there, which hold the
    earlier run's lines, are emptied instead (they are open). Returns whether anything was deleted."""
    if not run_dir.is_dir():
        return False
    entries = {p for pattern in START_FILES for p in run_dir.glob(pattern)}
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    if entries:
        for handler in _log_handlers(run_dir):
            handler.flush()
            os.truncate(handler.baseFilename, 0)
    return bool(entries)


def _save_hydra_record(run_dir: Path, task_cfg, overrides: list[str] | None = None) -> None:
    """What Hydra would have written to .hydra/: the composed config, Hydra's config and the overrides."""
    from hydra.core.hydra_config import HydraConfig  # Hydra, in library code: loaded only when a run dir is claimed

    if overrides is None and not HydraConfig.initialized():
        return
    folder = run_dir / ".hydra"
    folder.mkdir(exist_ok=True)
    # every record passes through `masked`: a database URL's password on the command line is never written
    if task_cfg is not None:
        OmegaConf.save(OmegaConf.create(masked(task_cfg)), folder / "config.yaml")
    if overrides is not None:  # composed by cnnlab itself (a search trial): the Hydra job's record is not this run's
        OmegaConf.save(OmegaConf.create(masked(list(overrides))), folder / "overrides.yaml")
        return
    hydra_cfg = HydraConfig.get()
    OmegaConf.save(OmegaConf.create({"hydra": masked(hydra_cfg)}), folder / "hydra.yaml")
    OmegaConf.save(OmegaConf.create(masked(hydra_cfg.overrides.task)), folder / "overrides.yaml")
