"""Hydra launcher plugins a sweep can run through (docs/distributed.md), checked before Hydra starts.

Without its plugin, `hydra/launcher=parallel` ends in Hydra's "could not find hydra/launcher/joblib" and
`hydra/launcher=joblib` in a list of options that lacks it: neither says what to install. Here the command line
gets one line naming the pip extra instead.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile

from cnnlab.errors import ConfigError
from cnnlab.config.overrides import override_key, split_override

# hydra/launcher option -> (the modules it needs, the pip extra that installs them). cnnlab's presets
# (configs/hydra/launcher/) and the plugins' own option names.
_JOBLIB = (("hydra_plugins.hydra_joblib_launcher", "joblib"), "joblib")
_SUBMITIT = (("hydra_plugins.hydra_submitit_launcher", "submitit"), "slurm")
NEEDS = {"parallel": _JOBLIB, "joblib": _JOBLIB,
         "slurm": _SUBMITIT, "slurm_local": _SUBMITIT, "submitit_slurm": _SUBMITIT, "submitit_local": _SUBMITIT}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that cannot be imported
        return False


def check_launcher(args: list[str]) -> None:
    """`hydra/launcher=<option>` on the command line: its plugin is installed, else ConfigError naming the extra."""
    for arg in args:
        key, option, sep = split_override(arg)
        if not sep or key not in ("hydra/launcher", "override hydra/launcher") or option not in NEEDS:
            continue
        modules, extra = NEEDS[option]
        missing = [m for m in modules if not _installed(m)]
        if missing:
            raise ConfigError(f"hydra/launcher={option} needs {missing[0].split('.')[-1]}, which is not installed: "
                              f'pip install "cnnlab[{extra}]"')


def under_torchrun() -> bool:
    """This process is one of several that torchrun (or another env:// launcher) started."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def torchrun_arguments(args: list[str]) -> tuple[list[str], str | None]:
    """Under torchrun, the Hydra arguments this process adds, and a scratch dir to delete at exit.

    Rank 0 runs as usual. Every other rank would otherwise make a run dir of its own (`${now:}_${pid:}` differ
    per process) with a log file in it: they get a scratch dir for Hydra instead, and log to the console only;
    the run dir they train in is rank 0's, handed over when the process group is up (cnnlab.run.lifecycle.prepare).
    A sweep (-m) is refused: each of its jobs would be all processes at once."""
    if not under_torchrun():
        return [], None
    if any(a in ("-m", "--multirun") for a in args):
        raise ConfigError("a sweep (-m) cannot run under torchrun: torchrun starts the processes of ONE run. Run the "
                          "sweep with a launcher whose jobs are DDP runs (hydra/launcher=slurm with "
                          "hydra.launcher.tasks_per_node=<GPUs>), or one torchrun per setting (docs/distributed.md)")
    if int(os.environ["RANK"]) == 0:
        return [], None
    scratch = tempfile.mkdtemp(prefix=f"cnnlab-rank{os.environ['RANK']}-")
    kept = [a for a in args if override_key(a) != "hydra.run.dir"]
    return kept + [f"hydra.run.dir={scratch}", "hydra.job_logging.root.handlers=[console]"], scratch
