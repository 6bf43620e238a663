"""What every command-line entry point shares: turning bad input into one clear line and exit status 2."""

from __future__ import annotations

import functools
import logging
import os
import shutil
import sys
import tempfile

from cnnlab.config.compose import config_dir
from cnnlab.errors import ConfigError, RunError, TrainingStopped, disk_full
from cnnlab.cli.launchers import check_launcher
from cnnlab.util.outpaths import missing_dirs, remove_empty
from cnnlab.config.overrides import check_override_keys, override_key, split_override, without_hydra


def _other_rank() -> str | None:
    """Under torchrun, this process's rank when it is not rank 0 (whose messages are the run's)."""
    rank = os.environ.get("RANK", "0")
    return rank if int(os.environ.get("WORLD_SIZE", "1")) > 1 and rank != "0" else None


def _report(message: str) -> None:
    if _other_rank() is not None:
        message = f"[rank {_other_rank()}] {message}"
    if logging.getLogger().handlers:  # under Hydra: console and the run's log file
        logging.getLogger("cnnlab").error("%s", message)
    else:
        print(message, file=sys.stderr)


def reports_config_errors(fn):
    """Run fn and turn the errors a user can act on into one message and an exit status, no traceback:
    bad input (ConfigError) -> 2, a run that cannot go on (RunError) -> 1, stopped by a signal -> 128 + signal."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ConfigError as bad:
            _report(f"error: {bad}")
            sys.exit(2)
        except RunError as bad:
            _report(f"error: {bad}")
            sys.exit(1)
        except TrainingStopped as stopped:
            if _other_rank() is None:  # every process stopped at the same step; rank 0 says where and how to go on
                _report(str(stopped))
            sys.exit(128 + stopped.signum)
        except KeyboardInterrupt:  # Ctrl-C before training installed its own handler (start-up, eval, predict)
            _report("interrupted by Ctrl-C before training started; nothing was trained")
            sys.exit(130)
        except OSError as bad:  # a full disk where no step of the command said more (its other OSErrors: bugs)
            if not disk_full(bad):
                raise
            where = os.fsencode(str(bad.filename or "a file")).decode("utf-8", "backslashreplace")
            _report(f"error: could not write {where}: the disk is full ({bad.strerror or bad}); nothing that was "
                    f"there is lost. Free some space (or write elsewhere: paths.output_root), then run the same "
                    f"command again")
            sys.exit(1)

    return wrapper


# Command-line keys that say where a run's directory goes, most specific first.
_OUTPUT_KEYS = ("hydra.run.dir", "hydra.sweep.dir", "paths.output_root")


@reports_config_errors
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


@reports_config_errors
def check_command_line(args: list[str], config_name: str = "train") -> None:
    """Before Hydra starts: every overridden key exists in the config tree (else the closest one is named),
    the launcher's plugin is installed, and the run directory can be written."""
    check_override_keys(args, config_dir(), config_name)
    check_launcher(args)
    check_output_location(args)


@reports_config_errors
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



def add_device_argument(parser) -> None:
    """--device of the commands that load a trained model (predict, explain)."""
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default auto)")


def add_trust_repo_argument(parser) -> None:
    """--trust-repo of the commands that rebuild a model from a checkpoint alone (predict, explain, export)."""
    parser.add_argument("--trust-repo", action="append", default=[], metavar="REPO",
                        help="for model=hub checkpoints: a hub repository (as the checkpoint's model.repo names it) "
                             "whose hubconf.py (Python code) may run to rebuild the model; repeatable")
