"""What every command-line entry point shares: turning bad input into one clear line and exit status 2."""

from __future__ import annotations

import functools
import logging
import sys

from cnnlab.errors import ConfigError, RunError, TrainingStopped


def _report(message: str) -> None:
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
            _report(str(stopped))
            sys.exit(128 + stopped.signum)

    return wrapper


def hydra_overrides() -> list[str]:
    """The command line's overrides when running under Hydra, else none."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return list(HydraConfig.get().overrides.task)
    return []
