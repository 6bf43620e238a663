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
    kept = [a for a in args if a.partition("=")[0].lstrip("+~") != "hydra.run.dir"]
    return kept + [f"hydra.run.dir={scratch}", "hydra.job_logging.root.handlers=[console]"], scratch


# The variables joblib sets in its workers to share the cores between the jobs running at once.
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
                "VECLIB_MAXIMUM_THREADS", "NUMBA_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def keep_jobs_apart() -> None:
    """hydra/launcher=parallel (joblib): each job runs in a worker process of its own, so that one killed
    worker (the kernel's out-of-memory killer, a SIGKILL) ends only its own job. joblib's shared pool of
    workers would be broken by it, which kills the jobs running in the other workers and ends the sweep before
    its summary. Called in the launching process before the sweep starts (cnnlab.experiments.sweep)."""
    try:
        from hydra_plugins.hydra_joblib_launcher import _core
    except ImportError:
        return
    if not getattr(_core.launch, "keeps_jobs_apart", False):
        _launch_apart.original = _core.launch
        _core.launch = _launch_apart


def _launch_apart(launcher, job_overrides, initial_job_idx):
    """hydra-joblib-launcher's launch, with one single-worker loky pool per job and at most n_jobs at once."""
    import logging
    from concurrent.futures import ThreadPoolExecutor
    from concurrent.futures.process import BrokenProcessPool
    from pathlib import Path

    from hydra.core.singleton import Singleton
    from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
    from hydra_plugins.hydra_joblib_launcher._core import execute_job
    from joblib import cpu_count
    from joblib.externals.loky import ProcessPoolExecutor

    log = logging.getLogger("cnnlab")
    setup_globals()
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    n_jobs = int(launcher.joblib.get("n_jobs") or -1)
    if n_jobs < 0:
        n_jobs = max(cpu_count() + 1 + n_jobs, 1)
    n_jobs = max(1, min(n_jobs, len(job_overrides)))
    env = {var: os.environ.get(var, str(max(cpu_count() // n_jobs, 1))) for var in _THREAD_VARS}
    log.info("launching %d jobs, %d at a time, each in a process of its own; sweep dir %s", len(job_overrides),
             n_jobs, sweep_dir)
    for idx, overrides in enumerate(job_overrides):
        log.info("\t#%d : %s", initial_job_idx + idx, " ".join(filter_overrides(overrides)))
    state = Singleton.get_state()

    def one(idx: int, overrides) -> JobReturn:
        pool = ProcessPoolExecutor(max_workers=1, env=env)
        try:
            future = pool.submit(execute_job, idx, overrides, launcher.hydra_context, launcher.config,
                                 launcher.task_function, state)
            result = future.result()
            if int(launcher.joblib.get("verbose") or 0) > 0:
                log.info("job %d done", idx)
            return result
        except BrokenProcessPool as died:  # its worker was killed: this job alone is lost
            from cnnlab.experiments.sweep import note_job

            reason = _how_it_died(died)
            job_dir = _job_dir(launcher, overrides, idx, sweep_dir)
            note_job(sweep_dir, idx, job_dir, f"its worker process died ({reason})", list(overrides), "died")
            log.error("job %d (%s): its worker process died (%s); the other jobs go on", idx,
                      " ".join(filter_overrides(overrides)), reason)
            ret = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED)
            ret.return_value = float("nan")  # as continues_sweep returns for a failed job: the sweep goes on
            return ret
        finally:
            pool.shutdown(wait=True, kill_workers=True)

    with ThreadPoolExecutor(n_jobs) as threads:
        futures = [threads.submit(one, initial_job_idx + i, o) for i, o in enumerate(job_overrides)]
        return [f.result() for f in futures]


_launch_apart.keeps_jobs_apart = True


def _how_it_died(error: BaseException) -> str:
    """'killed by SIGKILL' from loky's "The exit codes of the workers are {SIGKILL(-9)}", else the error's type."""
    import re

    found = re.search(r"exit codes of the workers are \{([^}]*)\}", str(error))
    if not found:
        return type(error).__name__
    code = found.group(1).strip()
    name = re.match(r"(SIG[A-Z0-9]+)\(", code)
    return f"killed by {name.group(1)}" if name else f"exit code {code}"


def _job_dir(launcher, overrides, idx: int, sweep_dir):
    """The dir a job of the sweep was given (hydra.sweep.subdir resolved for it), else sweep_dir/<job number>."""
    from omegaconf import open_dict

    try:
        cfg = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
        with open_dict(cfg):
            cfg.hydra.job.num = idx
        return sweep_dir / str(cfg.hydra.sweep.subdir)
    except Exception:  # an interpolation only the job's own process resolves
        return sweep_dir / str(idx)
