"""What every command-line entry point shares: turning bad input into one clear line and exit status 2."""

from __future__ import annotations

import functools
import logging
import os
import sys

from cnnlab.config.compose import config_dir
from cnnlab.errors import ConfigError, RunError, TrainingStopped, disk_full
from cnnlab.cli.launchers import check_launcher
from cnnlab.config.overrides import check_override_keys
from cnnlab.run import precheck
from cnnlab.run.precheck import check_writable  # noqa: F401  (cnnlab-lab's --out and --page)


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


check_output_location = reports_config_errors(precheck.check_output_location)
check_config = reports_config_errors(precheck.check_config)


@reports_config_errors
def check_command_line(args: list[str], config_name: str = "train") -> None:
    """Before Hydra starts: every overridden key exists in the config tree (else the closest one is named),
    the launcher's plugin is installed, and the run directory can be written."""
    check_override_keys(args, config_dir(), config_name)
    check_launcher(args)
    precheck.check_output_location(args)


def add_device_argument(parser) -> None:
    """--device of the commands that load a trained model (predict, explain)."""
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default auto)")


def add_trust_repo_argument(parser) -> None:
    """--trust-repo of the commands that rebuild a model from a checkpoint alone (predict, explain, export)."""
    parser.add_argument("--trust-repo", action="append", default=[], metavar="REPO",
                        help="for model=hub checkpoints: a hub repository (as the checkpoint's model.repo names it) "
                             "whose hubconf.py (Python code) may run to rebuild the model; repeatable")
