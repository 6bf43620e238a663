"""What every command-line entry point shares: turning bad input into one clear line and exit status 2."""

from __future__ import annotations

import functools
import logging
import sys

from cnnlab.errors import ConfigError


def reports_config_errors(fn):
    """Run fn; a ConfigError becomes 'error: <message>' on stderr and exit status 2, with no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ConfigError as bad:
            if logging.getLogger().handlers:  # under Hydra: console and the run's log file
                logging.getLogger("cnnlab").error("error: %s", bad)
            else:
                print(f"error: {bad}", file=sys.stderr)
            sys.exit(2)

    return wrapper


def hydra_overrides() -> list[str]:
    """The command line's overrides when running under Hydra, else none."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return list(HydraConfig.get().overrides.task)
    return []
