"""Opening a search's Optuna study storage: for cnnlab-tune's workers, and read only for the results (the design:
docs/search_storage.md)."""

from __future__ import annotations

from pathlib import Path

from optuna.storages import BaseStorage

from cnnlab.errors import ConfigError
from cnnlab.search.database import mask_password, open_rdb
from cnnlab.search.journal import open_journal


def open_storage(url: str | None, study_dir: Path, *, heartbeat_s: int = 60) -> BaseStorage:
    """The study's storage: the journal file `study_dir/study.journal` when `url` is None, else the RDB at `url`
    (sqlite:///, postgresql://, mysql://) with a heartbeat every `heartbeat_s` seconds.

    An RDB is connected to here, so an unreachable server, a wrong password, a missing driver or a malformed
    URL is one ConfigError naming search.storage (password masked) before any trial runs."""
    if url is None:
        return open_journal(study_dir)
    return open_rdb(url, heartbeat_s=heartbeat_s)


def open_for_reading(url: str | None, study_dir: Path, *, named: bool = False) -> BaseStorage:
    """The storage of a finished or running study, for reading its results; nothing is created.

    url: what study.yaml records (named=False), or what the user named on the command line (named=True).
    A study dir's own storage is opened without asking: its journal file, or an SQLite file inside it (read
    only). Any other storage a study.yaml names (a database server, a file elsewhere) is not connected to:
    a ConfigError says to name it; one the user named is opened like cnnlab-tune opens it."""
    study_dir = Path(study_dir)
    if url is None:
        return open_journal(study_dir, read_only=True)
    import sqlalchemy  # Optuna's own dependency; only RDB storages need it

    shown = mask_password(url)
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        parsed = None
    if parsed is not None and parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        path = Path(parsed.database).expanduser()
        inside = (path if path.is_absolute() else Path.cwd() / path).resolve()
        if named or inside.is_relative_to(study_dir.resolve()):
            if not inside.is_file():
                raise ConfigError(f"storage {shown!r}: {inside} does not exist (or is not a file); nothing was "
                                  f"created")
            return open_rdb(f"sqlite:///file:{inside}?mode=ro&uri=true", heartbeat_s=60)
    if not named:
        raise NotNamed(f"the study's storage {shown!r} (in {study_dir / 'study.yaml'}) is not in the study dir: "
                          f"it is not connected to unless named; give it with --storage URL to read the study")
    return open_rdb(url, heartbeat_s=60)


class NotNamed(ConfigError):
    """A study's storage that is not read unless the user names it."""
