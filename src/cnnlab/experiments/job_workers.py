"""hydra/launcher=parallel (joblib) with one worker process per job, so that a killed worker ends its own job only."""

from __future__ import annotations

import os

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
            from cnnlab.experiments.job_notes import note_job

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
