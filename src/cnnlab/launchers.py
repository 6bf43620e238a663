"""Hydra launcher plugins a sweep can run through (docs/distributed.md), checked before Hydra starts.

Without its plugin, `hydra/launcher=parallel` ends in Hydra's "could not find hydra/launcher/joblib" and
`hydra/launcher=joblib` in a list of options that lacks it: neither says what to install. Here the command line
gets one line naming the pip extra instead.
"""

from __future__ import annotations

import importlib.util

from cnnlab.errors import ConfigError

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
        key, sep, option = arg.lstrip("+~").partition("=")
        if not sep or key not in ("hydra/launcher", "override hydra/launcher") or option not in NEEDS:
            continue
        modules, extra = NEEDS[option]
        missing = [m for m in modules if not _installed(m)]
        if missing:
            raise ConfigError(f"hydra/launcher={option} needs {missing[0].split('.')[-1]}, which is not installed: "
                              f'pip install "cnnlab[{extra}]"')
