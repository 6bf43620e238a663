"""Finding the runs behind a path a user names: a run dir, a sweep dir (job dirs under it) or a study dir
(study.yaml and trial run dirs under trials/<number>/), and opening a study dir's Optuna study."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from cnnlab.errors import ConfigError
from cnnlab.run.records import is_run_dir
from cnnlab.experiments.sweep import job_dirs

STUDY_FILE = "study.yaml"
JOURNAL_FILE = "study.journal"
TRIALS_DIR = "trials"


@dataclass
class Found:
    """What a path turned out to be: kind is run | sweep | study."""

    path: Path
    kind: str
    run_dirs: list[Path]


def expand(path: Path, name: str = "path") -> Found:
    """A run dir stands for itself, a sweep dir for its job dirs, a study dir for its trial dirs. A path that
    does not exist or holds no cnnlab run is a ConfigError naming it (`name`: how the user gave it)."""
    from cnnlab.util.outpaths import file_kind

    path = Path(path)
    kind = file_kind(path)  # stat() only: a FIFO is named, never opened
    if kind == "missing":
        raise ConfigError(f"{name} {path}: no such file or directory")
    if kind != "dir":
        what = "a file" if kind == "file" else kind
        raise ConfigError(f"{name} {path} is {what}, not a directory; give a run dir, a sweep dir or a study dir")
    if (path / STUDY_FILE).is_file():
        return Found(path, "study", job_dirs(path / TRIALS_DIR))
    if is_run_dir(path):
        return Found(path, "run", [path])
    jobs = job_dirs(path)
    if jobs:
        return Found(path, "sweep", jobs)
    raise ConfigError(f"{name} {path}: holds no cnnlab run (no metrics.json, failure.json or config_resolved.yaml "
                      f"in it or in its subdirectories); give a run dir, a sweep dir or a study dir")


def study_info(study_dir: Path) -> dict:
    """study.yaml of a study dir: study_name, storage (null: the journal file in the study dir), metric, ..."""
    study_dir = Path(study_dir)
    try:
        info = yaml.safe_load((study_dir / STUDY_FILE).read_text()) or {}
    except (OSError, yaml.YAMLError, ValueError) as bad:
        raise ConfigError(f"{study_dir / STUDY_FILE}: cannot be read ({str(bad).splitlines()[0]})") from None
    if not isinstance(info, dict) or not info.get("study_name"):
        raise ConfigError(f"{study_dir / STUDY_FILE}: study_name is missing")
    return info


def load_study(study_dir: Path, storage: str | None = None):
    """The Optuna study a study dir records, opened for reading only: study.yaml names it and its storage (the
    journal file study.journal next to it, or a URL). `storage`: the URL the user named instead (the only way
    a database server is connected to; see cnnlab.search.storage.open_for_reading)."""
    import optuna  # a second of imports: only study dirs need it

    from cnnlab.search.storage import open_for_reading

    study_dir = Path(study_dir)
    info = study_info(study_dir)
    if storage is not None:
        opened = open_for_reading(storage, study_dir, named=True)
    else:
        opened = open_for_reading(info.get("storage"), study_dir)
    try:
        return optuna.load_study(study_name=str(info["study_name"]), storage=opened)
    except KeyError:
        raise ConfigError(f"{study_dir}: its storage holds no study named {info['study_name']!r}") from None
