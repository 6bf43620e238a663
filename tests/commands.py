"""Runs a cnnlab command's entry point inside the test process as `python -m cnnlab.cli.<command>` would run it."""

from __future__ import annotations

import contextlib
import gc
import importlib
import io
import logging
import os
import subprocess
import sys
import traceback
import warnings
from pathlib import Path

# What a fresh interpreter shows (Python's default filters) plus the project's (pyproject.toml filterwarnings).
_FRESH_FILTERS = [("default", DeprecationWarning, "__main__"), ("ignore", DeprecationWarning, None),
                  ("ignore", PendingDeprecationWarning, None), ("ignore", ImportWarning, None),
                  ("ignore", ResourceWarning, None)]


def _warning_to_stderr(message) -> None:
    sys.stderr.write(warnings._formatwarnmsg(message))


@contextlib.contextmanager
def _as_a_fresh_process(argv: list[str], cwd: Path, out: io.StringIO, err: io.StringIO):
    """sys.argv, the working directory, the environment, the root logger (no handlers, as before Hydra sets
    them up), warnings (shown on stderr) and Hydra's global state as a new process has them; all restored."""
    from hydra.core.global_hydra import GlobalHydra

    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    saved_argv, saved_cwd, saved_env = sys.argv[:], os.getcwd(), dict(os.environ)
    saved_loggers = {name: (lg.level, lg.handlers[:], lg.propagate, lg.disabled)
                     for name, lg in logging.root.manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    GlobalHydra.instance().clear()
    root.handlers = []
    sys.argv = argv
    os.chdir(cwd)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            warnings.resetwarnings()
            for action, category, module in reversed(_FRESH_FILTERS):
                warnings.filterwarnings(action, category=category, module=module or "")
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="tensorboard.*")
            warnings.showwarning = warnings._showwarning_orig
            warnings._showwarnmsg_impl = _warning_to_stderr  # pytest's recorder is set aside for the command
            yield
    finally:
        GlobalHydra.instance().clear()
        for handler in root.handlers:  # what the command's logging set up (the run's log file included)
            if handler not in saved_handlers:
                handler.close()
        root.handlers, root.level = saved_handlers, saved_level
        for name, lg in logging.root.manager.loggerDict.items():
            if isinstance(lg, logging.Logger):
                level, handlers, propagate, disabled = saved_loggers.get(name, (logging.NOTSET, [], True, False))
                for handler in lg.handlers:
                    if handler not in handlers:
                        handler.close()
                lg.setLevel(level)
                lg.handlers, lg.propagate, lg.disabled = handlers, propagate, disabled
        os.chdir(saved_cwd)
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)
        gc.unfreeze()  # cnnlab-train freezes the objects left for the process's shutdown


def run_in_process(module: str, *args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m cnnlab.cli.<module> args...` run by calling the module's main() here: the exit status,
    stdout and stderr come back as subprocess.run gives them (`timeout` is accepted and not enforced)."""
    command = importlib.import_module(f"cnnlab.cli.{module}")
    out, err = io.StringIO(), io.StringIO()
    argv = [command.__file__, *args]
    code = 0
    with _as_a_fresh_process(argv, Path(cwd), out, err):
        try:
            returned = command.main()
            code = returned if isinstance(returned, int) else (1 if returned else 0)  # sys.exit(main()) alike
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
            if stop.code is not None and not isinstance(stop.code, int):
                print(stop.code, file=sys.stderr)
        except Exception:  # the interpreter's report of an uncaught exception, and its status
            traceback.print_exc()
            code = 1
        finally:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())
