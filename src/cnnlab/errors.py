"""The one exception type for bad user input: the CLIs print its message without a traceback; and how a failed
write is told apart as a full disk."""

import errno

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)  # no space left, or the user's quota used up


def disk_full(error: BaseException) -> bool:
    """The error is a write that failed for want of space."""
    return isinstance(error, OSError) and error.errno in DISK_FULL


def write_failure(error: OSError) -> str:
    """Why a write failed, in a message's words: 'the disk is full', else the system's."""
    return "the disk is full" if disk_full(error) else (error.strerror or str(error))


def first_line(error: BaseException) -> str:
    """The first line of an error's message, or its type's name when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class ConfigError(ValueError):
    """A config value, override or file the user supplied cannot be used.

    The message names the offending key (or file), the bad value and what is accepted.
    """

    def __init__(self, problems):
        if isinstance(problems, str):
            problems = [problems]
        self.problems = list(problems)
        if len(self.problems) == 1:
            message = self.problems[0]
        else:
            message = f"{len(self.problems)} problems in the config:\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(message)


class RunError(RuntimeError):
    """A run that started correctly cannot go on (divergence, full disk, out of memory).

    The message says what happened, where, what was kept and what to try; the CLIs print it without a
    traceback and exit with status 1.
    """


class TrainingStopped(RuntimeError):
    """Training was stopped by a signal after writing a resumable checkpoint; exit status 128 + signal.
    `what` says where it stopped and what was written, `advice` how to continue; a caller that continues it
    otherwise (a lab lesson, a search) keeps `what` and gives its own advice."""

    def __init__(self, what: str, signum: int, advice: str = ""):
        super().__init__(f"{what}. {advice}" if advice else what)
        self.what, self.signum, self.advice = what, signum, advice


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (a notebook's interrupt) stopped training started from Python (cnnlab.train) after the current step,
    with a resumable checkpoint written; `run_dir` is its directory and `run` the stopped run (run.resume() continues it).
    A KeyboardInterrupt, so that a cell stops as on any interrupt and code that catches KeyboardInterrupt sees it."""

    def __init__(self, message: str, run_dir=None):
        super().__init__(message)
        self.run_dir = run_dir
        self.run = None
