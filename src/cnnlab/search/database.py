"""A study in a database (SQLite, PostgreSQL, MySQL): connecting to its URL, the driver it needs, and the
database's complaints worded for the user."""

from __future__ import annotations

import importlib.util
import time
import warnings

import optuna
from optuna.storages import RDBStorage

from cnnlab.errors import ConfigError, first_line
from cnnlab.util.masking import mask

KEY = "search.storage"
RDB_BACKENDS = ("sqlite", "postgresql", "mysql")
CONNECT_TIMEOUT_S = 5  # an unreachable server is reported in seconds, not after the OS's minutes-long default
TABLE_CREATION_ATTEMPTS = 5


def open_rdb(url: str, *, heartbeat_s: int) -> RDBStorage:
    import sqlalchemy  # Optuna's own dependency; only RDB storages need it

    shown = mask_password(url)
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        raise ConfigError(f"{KEY}={shown!r} is not a database URL; use postgresql://user:password@host[:port]/"
                          "database, mysql+pymysql://..., sqlite:///path, or leave it unset for the study's "
                          "journal file") from None
    backend = parsed.get_backend_name()
    if backend not in RDB_BACKENDS:
        hint = " (write postgresql://)" if backend == "postgres" else ""
        raise ConfigError(f"{KEY}={shown!r}: '{backend}' is not a supported database{hint}; use one of "
                          f"{', '.join(RDB_BACKENDS)}, or leave it unset for the study's journal file")
    parsed = with_driver(parsed)
    engine_kwargs = {}
    if backend != "sqlite" and "connect_timeout" not in parsed.query:
        engine_kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    for attempt in range(TABLE_CREATION_ATTEMPTS):
        try:
            with warnings.catch_warnings():  # heartbeat_interval is marked experimental
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(parsed.render_as_string(hide_password=False), engine_kwargs=engine_kwargs,
                                  heartbeat_interval=heartbeat_s, grace_period=2 * heartbeat_s)
        except ImportError:
            raise ConfigError(f"{KEY}={shown!r}: {missing_driver(parsed)}") from None
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as bad:
            # Workers starting together on a new database race to create Optuna's tables; the loser's
            # CREATE TABLE fails on a duplicate, and the next attempt finds the tables there.
            if attempt + 1 == TABLE_CREATION_ATTEMPTS:
                raise ConfigError(f"{KEY}={shown!r}: cannot use the database: {db_reason(bad, parsed)}") from None
            time.sleep(0.2 * (attempt + 1))
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as bad:
            raise ConfigError(f"{KEY}={shown!r}: cannot use the database: {db_reason(bad, parsed)}") from None


def db_reason(error: Exception, url) -> str:
    """The database driver's own first line (not SQLAlchemy's wrapping), the password masked should it appear."""
    reason = first_line(error.orig if getattr(error, "orig", None) is not None else error)
    return reason.replace(url.password, "***") if url.password else reason


def with_driver(url):
    """The URL with its driver named: postgresql:// means the postgres extra's psycopg2 (SQLAlchemy alone would
    pick psycopg 3 for it), the one place this is decided for every command that opens a study."""
    if url.drivername == "postgresql":
        return url.set(drivername=f"postgresql+{postgres_driver()}")
    return url


def postgres_driver() -> str:
    # SQLAlchemy 2.1 reads postgresql:// as psycopg (3); cnnlab's postgres extra installs psycopg2.
    return next((name for name in ("psycopg2", "psycopg") if importlib.util.find_spec(name)), "psycopg2")


def missing_driver(url) -> str:
    driver = url.get_driver_name()
    if url.get_backend_name() == "postgresql" and driver in ("psycopg2", "psycopg"):
        return 'the PostgreSQL driver is not installed: pip install "cnnlab[postgres]"'
    if url.get_backend_name() == "mysql" and driver == "mysqldb":
        return "the MySQL driver is not installed: pip install mysqlclient, or pymysql with mysql+pymysql://"
    return f"the database driver '{driver}' is not installed (pip install it, or choose another in the URL)"


def mask_password(url: str) -> str:
    """The URL as it may be shown: its password, if any, as ***."""
    return mask(url)
