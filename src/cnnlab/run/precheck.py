"""The checks a training command makes before Hydra starts (its run dir and log file are created then): the run
directory can be written, and the config the overrides compose passes validation. cnnlab-train, -tune and -doctor
(through cnnlab.cli.common, which turns their ConfigError into one line and exit status 2) and the Python API
(cnnlab.api, which raises it) share them."""

from __future__ import annotations

import os
import shutil
import tempfile

from cnnlab.errors import ConfigError, disk_full
from cnnlab.util.outpaths import missing_dirs, remove_empty
from cnnlab.config.overrides import override_key, split_override, without_hydra


# Command-line keys that say where a run's directory goes, most specific first.
_OUTPUT_KEYS = ("hydra.run.dir", "hydra.sweep.dir", "paths.output_root")


def check_output_location(args: list[str], default_root: str = "outputs") -> None:
    """Before Hydra starts: the run directory the command line asks for can be created and written.

    Hydra creates the run dir before any cnnlab code runs; a location under a regular file or on a read-only
    file system would otherwise end in Hydra's traceback. The check creates the directory (or the output
    root) that Hydra would create a moment later.
    """
    given = {}
    for arg in args:
        key, value, sep = split_override(arg)
        if sep and key in _OUTPUT_KEYS:
            given[key] = value
    multirun = any(a in ("-m", "--multirun") for a in args)
    for key in ("hydra.sweep.dir" if multirun else "hydra.run.dir", "paths.output_root"):
        if key in given:
            where = given[key]
            break
    else:
        key, where = "paths.output_root", default_root
    if "${" in where:
        return  # an interpolation: Hydra resolves it later
    check_writable(where, key, "the run directory")


def check_writable(where: str, key: str, what: str = "the output") -> None:
    """`where` (a directory, created if missing) can take a new folder and a file with data in it, else
    ConfigError naming `key=where` and why: a full disk (creating an empty file may still succeed there), a read-only
    file system, a regular file in the way; a path whose bytes are not UTF-8 (TensorBoard, YAML and JSON records
    name the run dir in UTF-8) is refused before anything is created. The probe leaves nothing behind."""
    shown = os.fsencode(where).decode("utf-8", "backslashreplace")  # \xNN for bytes that are not UTF-8
    absolute = os.path.abspath(os.path.expanduser(where))
    try:
        absolute.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"{key}={shown}: {what} would be at {os.fsencode(absolute).decode('utf-8', 'backslashreplace')}"
                          f", a path whose name is not UTF-8 (shown with \\xNN escapes); the run's records "
                          f"(TensorBoard event files, .hydra/, metrics.json) name it in UTF-8. Choose a directory "
                          f"whose path is UTF-8") from None
    folder = os.path.expanduser(where)
    created = missing_dirs(folder)  # removed again if the probe fails: a refused place is left as it was
    try:
        os.makedirs(folder, exist_ok=True)
        probe_dir = tempfile.mkdtemp(prefix=".cnnlab-probe-", dir=folder)
        try:
            with open(os.path.join(probe_dir, "probe"), "wb") as probe:
                probe.write(b"\0" * 4096)
                probe.flush()
                os.fsync(probe.fileno())
        finally:
            shutil.rmtree(probe_dir, ignore_errors=True)
    except OSError as bad:
        remove_empty(created)
        reason = bad.strerror or type(bad).__name__
        if disk_full(bad):
            reason = "the disk is full"
        elif isinstance(bad, (FileExistsError, NotADirectoryError)):
            reason = f"a file is in the way: {what} would go under a regular file"
        raise ConfigError(f"{key}={shown}: cannot create or write "
                          f"{what} there ({reason}); choose a directory you can write to"
                          f"{' (or free some space)' if disk_full(bad) else ''}") from None


def check_config(args: list[str], config_name: str, kind: str | None = None):
    """Before Hydra starts: the config the command line composes passes validation (`kind`: its schema, by
    default config_name). Hydra creates the run dir and its log file before any cnnlab code runs, and a run dir
    may be named by a bad value (search.study_name=../../x), so bad input is refused here, before anything is
    written. Sweeps (-m: each job is validated in turn) and resumed runs (validated with their saved config)
    are left to the job; so is an override Hydra itself refuses (its own message)."""
    from cnnlab.config.compose import compose_config  # Hydra's compose API: loaded only for this check
    from cnnlab.run.validate import validate

    if any(a in ("-m", "--multirun") for a in args):
        return None
    overrides = without_hydra(args)
    if any(override_key(a) == "trainer.resume" for a in overrides):
        return None
    try:
        cfg = compose_config(overrides, "unused", config_name)
    except ConfigError:
        raise
    except Exception:
        return None
    validate(cfg, kind or config_name)
    return cfg
