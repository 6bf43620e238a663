"""Finding the runs behind a path a user names: a run dir, a sweep dir (job dirs under it) or a study dir
(study.yaml and trial run dirs under trials/<number>/), and opening a study dir's Optuna study."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from cnnlab.errors import ConfigError
from cnnlab.experiments.runs import is_run_dir
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
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{name} {path}: no such file or directory")
    if not path.is_dir():
        raise ConfigError(f"{name} {path}: not a directory; give a run dir, a sweep dir or a study dir")
    if (path / STUDY_FILE).is_file():
        return Found(path, "study", job_dirs(path / TRIALS_DIR))
    if is_run_dir(path):
        return Found(path, "run", [path])
    jobs = job_dirs(path)
    if jobs:
        return Found(path, "sweep", jobs)
    raise ConfigError(f"{name} {path}: holds no cnnlab run (no metrics.json, failure.json or config_resolved.yaml "
                      f"in it or in its subdirectories); give a run dir, a sweep dir or a study dir")


def load_study(study_dir: Path):
    """The Optuna study a study dir records: study.yaml names it and its storage (an Optuna storage URL, or
    null for the journal file study.journal next to it)."""
    import optuna  # a second of imports: only study dirs need it

    study_dir = Path(study_dir)
    try:
        info = yaml.safe_load((study_dir / STUDY_FILE).read_text()) or {}
    except (OSError, yaml.YAMLError) as bad:
        raise ConfigError(f"{study_dir / STUDY_FILE}: cannot be read ({bad})") from None
    if not isinstance(info, dict) or not info.get("study_name"):
        raise ConfigError(f"{study_dir / STUDY_FILE}: study_name is missing")
    storage = info.get("storage")
    if storage is None:
        journal = study_dir / JOURNAL_FILE
        if not journal.is_file():
            raise ConfigError(f"{study_dir / STUDY_FILE}: storage is null but {journal} does not exist")
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    return optuna.load_study(study_name=str(info["study_name"]), storage=storage)
