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
- The marker records the run's kind (train, eval, doctor, tune): a directory of another kind is refused, even
  with `paths.existing_run=clear`, and clearing needs the marker: a directory without one is not a cnnlab
  run's, and nothing in it is deleted or overwritten. A study dir (cnnlab-tune) is claimed as kind `tune`.
- The marker is written whole or not at all (a temporary file linked into place); one left empty or unreadable
  by an older version, with no live process and no results, is what a stopped start-up left, as above.
- Only a directory this process claimed receives this process's records of failure (`owned`).
- Hydra is told not to write `.hydra/` itself (`hydra.output_subdir: null`): it would write it before any
  check could run, over the record of the run already there. `claim` writes it once the directory is ours.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
import uuid
from pathlib import Path

from omegaconf import OmegaConf

from cnnlab.errors import ConfigError, RunError, write_failure
from cnnlab.util.masking import masked, masked_argv

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


STUDY_FILE = "study.yaml"  # a cnnlab-tune study dir (cnnlab.search.plan)

_claimed: set[Path] = set()  # the run dirs this process claimed (resolved)


def owned(run_dir: Path) -> bool:
    """Whether this process claimed run_dir (its records, such as failure.json, may go there)."""
    return Path(run_dir).resolve() in _claimed


def forget_claims() -> None:
    """A new job starts in this process (a sweep's next job, a search's next trial): the dirs that earlier jobs
    claimed are theirs, not this one's."""
    _claimed.clear()


def record_failure(run_dir: Path, error, kind: str = "train", overrides: list[str] | None = None,
                   **extra) -> Path | None:
    """failure.json in run_dir, saying why this job did not finish, only if run_dir is this job's: claimed by it,
    or claimed now when it holds nothing of another run (a job that failed before its claim). A dir that holds
    another run, or a live one, gets nothing (returns None): its own records stay as they were."""
    from cnnlab.run.records import write_failure  # the record's format

    run_dir = Path(run_dir)
    if not owned(run_dir):
        try:
            claim(run_dir, kind, overrides=overrides)
        except (ConfigError, RunError):
            return None
    if overrides is not None:
        extra["overrides"] = overrides
    return write_failure(run_dir, error, **extra)


def startup_disk_message(path, error: OSError) -> str:
    """A write at start-up failed (the run had not trained): what, where, and that nothing is in the way."""
    return (f"could not write {path}: {write_failure(error)} ({error.__class__.__name__}: {error}). Nothing was trained and "
            f"nothing that was there is lost; free some space (or point paths.output_root elsewhere), then run the "
            f"same command again")


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
        _claimed.add(run_dir.resolve())
        return  # the very run, continued in place: its marker and .hydra/ record stay as they were
    owner = _marker(run_dir)
    _check_kind(run_dir, kind, owner)
    found = results_in(run_dir)
    if found and existing != "clear":
        raise ConfigError(
            f"{run_dir} already holds another run ({', '.join(found[:3])}); a run never mixes its files with "
            f"another's. Leave hydra.run.dir unset for a new directory, continue that run with "
            f"trainer.resume={run_dir} hydra.run.dir={run_dir}, or set paths.existing_run=clear to delete its "
            f"files first")
    if owner is None:
        ours = _named_like_ours(run_dir)
        if ours and (run_dir / MARKER).exists():  # another process claimed it since the marker was read
            raise ConfigError(_RACE.format(run_dir=run_dir))
        if ours:
            raise ConfigError(
                f"{run_dir} holds files named like a cnnlab run's ({', '.join(ours[:3])}) but no {MARKER}: they "
                f"are not a cnnlab run's, and nothing there is deleted or overwritten"
                f"{' (paths.existing_run=clear deletes only what a cnnlab run wrote)' if existing == 'clear' else ''}"
                f". Choose another hydra.run.dir, or leave it unset for a new directory")
    if owner is not None and _running(owner):
        elsewhere = owner.get("host") != socket.gethostname()
        if not (elsewhere and existing == "clear"):  # another machine's process cannot be checked: the user may
            raise ConfigError(                       # say it is gone
                f"{run_dir} is in use by another cnnlab run (process {owner.get('pid')} on {owner.get('host')}, "
                f"started {owner.get('started')}); leave hydra.run.dir unset so that each run gets its own "
                f"directory" + ("; if that run is no longer running, set paths.existing_run=clear" if elsewhere
                                else ""))
    marker = False
    try:
        if _clear(run_dir):
            log.info("%s: deleted the files of %s", run_dir, "the previous run (paths.existing_run=clear)" if found
                     else "an earlier run that stopped before writing any result")
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_marker(run_dir, kind)
        marker = True
        _save_hydra_record(run_dir, task_cfg, overrides)
    except OSError as bad:  # a full disk at start-up: nothing half-written stays in the way of the next try
        if marker:
            _unclaim(run_dir)
        raise RunError(startup_disk_message(bad.filename or run_dir, bad)) from bad
    _claimed.add(run_dir.resolve())


def claim_study(study_dir: Path) -> None:
    """Make `study_dir` a cnnlab-tune study dir (kind `tune`), or refuse a directory of another kind. A study
    dir is shared by design (the same command continues the study, several workers run its trials): no lock,
    and an existing study's marker stays as it is."""
    study_dir = Path(study_dir)
    owner = _marker(study_dir)
    _check_kind(study_dir, "tune", owner)
    if owner is None:
        ours = [n for n in _named_like_ours(study_dir) if n != ".hydra"]  # tune's own Hydra record
        if ours:
            raise ConfigError(f"{study_dir} holds a run's files ({', '.join(ours[:3])}), not a cnnlab-tune study: "
                              f"a study never mixes its files with a run's. Choose another hydra.run.dir (or "
                              f"search.study_name)")
        try:
            study_dir.mkdir(parents=True, exist_ok=True)
            _write_marker(study_dir, "tune")
        except FileExistsError:
            pass
        except OSError as bad:
            raise RunError(startup_disk_message(bad.filename or study_dir, bad)) from bad
    _claimed.add(study_dir.resolve())


def kind_of(run_dir: Path) -> str | None:
    """What made run_dir, by its marker (or a study file): train, eval, doctor, tune, ...; None if unknown."""
    owner = _marker(Path(run_dir))
    if owner and owner.get("kind"):
        return str(owner["kind"])
    if owner is None and (Path(run_dir) / STUDY_FILE).is_file():
        return "tune"
    return None


_KIND_NAMES = {"train": "cnnlab-train run", "eval": "cnnlab-eval run", "doctor": "cnnlab-doctor run",
               "tune": "cnnlab-tune study"}


def _check_kind(run_dir: Path, kind: str, owner: dict | None) -> None:
    found = owner.get("kind") if owner else None
    if found is None and owner is None and (run_dir / STUDY_FILE).is_file():
        found = "tune"  # a study started before studies had a marker
    if found and found != kind:
        theirs, mine = _KIND_NAMES.get(found, f"{found} run"), _KIND_NAMES.get(kind, f"{kind} run")
        raise ConfigError(f"{run_dir} is the directory of a {theirs}; a {mine} never shares a directory with "
                          f"another kind (paths.existing_run=clear does not change that). Leave hydra.run.dir "
                          f"unset for a new directory, or choose another one")


def _named_like_ours(run_dir: Path) -> list[str]:
    """Entries of run_dir whose names are those a cnnlab run writes (START_FILES), but the marker: one that
    appeared since it was looked for is another process's claim at this moment, which `_write_marker` names."""
    if not run_dir.is_dir():
        return []
    return sorted({p.name for pattern in START_FILES for p in run_dir.glob(pattern)} - {MARKER})


def _unclaim(run_dir: Path) -> None:
    """Undo a claim that failed half way (the marker and the .hydra/ record just written)."""
    for path in (run_dir / ".hydra", run_dir / MARKER):
        try:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        except OSError:
            pass


def _marker(run_dir: Path) -> dict | None:
    try:
        record = json.loads((run_dir / MARKER).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _running(owner: dict) -> bool:
    """Whether the process that wrote a marker may still be running (assumed so on another machine). A marker
    that names no process (left empty or unreadable by a start-up that failed) is nobody's."""
    if owner.get("pid") is None or owner.get("host") is None:
        return False
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


_RACE = ("{run_dir} was claimed by another cnnlab process at the same moment; leave hydra.run.dir unset so that "
         "each run gets its own directory")


def _write_marker(run_dir: Path, kind: str) -> None:
    """The marker, whole or not at all: written to a temporary file, then linked to its name, which fails if a
    marker is there already (of two processes racing for one directory, one wins)."""
    record = {"run_id": uuid.uuid4().hex, "kind": kind, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "host": socket.gethostname(), "pid": os.getpid(), "argv": masked_argv()}
    data = (json.dumps(record, indent=2, default=str) + "\n").encode("utf-8", "backslashreplace")
    tmp = run_dir / f"{MARKER}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(tmp, run_dir / MARKER)
    except FileExistsError:
        raise ConfigError(_RACE.format(run_dir=run_dir)) from None
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass


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
