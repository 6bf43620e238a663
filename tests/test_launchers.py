"""Sweeps through Hydra's launcher plugins: cnnlab's presets (configs/hydra/launcher/) extend the plugins' own
configs, the SLURM preset asks for one task per GPU, a missing plugin is one error line naming the pip extra, and
a sweep through joblib or submitit puts every job in the one sweep dir of the launching process (whose name holds
${pid:}) where the sweep summary finds them all."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
import warnings

import joblib
import pytest
from conftest import cli_env
from hydra import compose, initialize_config_dir
from hydra.utils import get_class
from omegaconf import OmegaConf

from cnnlab.config.compose import CONFIG_DIR

PLUGIN_CONFIGS = {  # cnnlab's preset -> the plugin's config it extends
    "parallel": "hydra_plugins.hydra_joblib_launcher.config.JobLibLauncherConf",
    "slurm_local": "hydra_plugins.hydra_submitit_launcher.config.LocalQueueConf",
    "slurm": "hydra_plugins.hydra_submitit_launcher.config.SlurmQueueConf",
}

TINY = ["model=lenet5", "data=digits", "trainer.limit_train_batches=2", "trainer.max_epochs=1",
        "trainer.progress=none", "trainer.summary=none", "logger.histogram_every_n_epochs=0"]


def _launcher_cfg(*overrides: str):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. Hydra's deprecated schema matching of a file named like a plugin config
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    return cfg.hydra.launcher


@pytest.mark.parametrize("preset", sorted(PLUGIN_CONFIGS))
def test_each_preset_extends_its_plugins_config(preset):
    launcher = _launcher_cfg(f"hydra/launcher={preset}")
    plugin = OmegaConf.structured(get_class(PLUGIN_CONFIGS[preset]))
    assert set(plugin) <= set(launcher)  # every key of the plugin, typed by it
    assert launcher._target_ == plugin._target_
    with pytest.raises(Exception, match="n_jobs|timeout_min"):  # the plugin's types apply to cnnlab's values
        _launcher_cfg(f"hydra/launcher={preset}", f"hydra.launcher.{'n_jobs' if preset == 'parallel' else 'timeout_min'}=many")


@pytest.fixture
def srun_on_path(monkeypatch, tmp_path):
    """submitit's SLURM executor refuses to start where it finds no srun; this one is never called."""
    srun = tmp_path / "bin" / "srun"
    srun.parent.mkdir()
    srun.write_text("#!/bin/sh\nexit 1\n")
    srun.chmod(0o755)
    monkeypatch.setenv("PATH", f"{srun.parent}{os.pathsep}{os.environ['PATH']}")


def _sbatch_script(tmp_path, *overrides: str) -> str:
    """The sbatch script the SLURM launcher would submit for these overrides (nothing is submitted)."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    params = OmegaConf.to_container(_launcher_cfg("hydra/launcher=slurm", f"hydra.sweep.dir={tmp_path}", *overrides),
                                    resolve=True)
    # What the plugin's BaseSubmititLauncher.launch does with the keys before it submits the job array.
    executor = submitit.AutoExecutor(cluster="slurm", folder=params.pop("submitit_folder"),
                                     slurm_max_num_timeout=params.pop("max_num_timeout"))
    del params["_target_"]
    base = set(OmegaConf.structured(BaseQueueConf))
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    return executor._executor._make_submission_file_text("python -u -m submitit.core._submit", "uid")


def test_the_slurm_preset_starts_one_task_per_gpu_with_the_cores_it_was_given(srun_on_path, tmp_path):
    script = _sbatch_script(tmp_path, "hydra.launcher.partition=gpu", "hydra.launcher.nodes=4",
                            "hydra.launcher.gpus_per_node=8", "hydra.launcher.cpus_per_task=10",
                            "hydra.launcher.timeout_min=600")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --nodes=4", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --ntasks-per-node=8", "#SBATCH --cpus-per-task=10", "#SBATCH --time=600",
                 "export OMP_NUM_THREADS=10"):
        assert line in script.splitlines(), script
    assert "\nsrun " in script  # srun starts the tasks: each gets its SLURM_PROCID / SLURM_LOCALID (its rank)
    default = _sbatch_script(tmp_path / "default")
    assert "#SBATCH --ntasks-per-node=1" in default and "#SBATCH --gpus-per-node=1" in default


@pytest.mark.parametrize("option, module, extra", [
    ("parallel", "hydra_plugins.hydra_joblib_launcher", "joblib"),
    ("slurm", "hydra_plugins.hydra_submitit_launcher", "slurm"),
    ("submitit_local", "submitit", "slurm"),
])
def test_a_launcher_whose_plugin_is_missing_names_the_pip_extra(tmp_path, option, module, extra):
    script = textwrap.dedent(f"""
        import sys
        sys.modules[{module!r}] = None  # as if the package were not installed: importing it fails
        sys.argv = ["cnnlab-train", "-m", "hydra/launcher={option}", "seed=0,1", "paths.output_root={tmp_path}"]
        from cnnlab.cli.train import main
        main()
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=cli_env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f'error: hydra/launcher={option} needs {module.split(".")[-1]}, which is not installed: '
        f'pip install "cnnlab[{extra}]"']
    assert not list(tmp_path.glob("multirun")), "nothing is started before the check"


def test_jobs_in_other_processes_resolve_the_launching_processs_sweep_dir(tmp_path):
    """${pid:} and ${now:} in hydra.sweep.dir are cached in the launching process; a joblib worker composes its
    job's config again and must land in that same dir (a trivial task on cnnlab's config tree: no training)."""
    app = tmp_path / "app.py"
    app.write_text(textwrap.dedent("""
        import os
        import hydra
        from hydra.core.hydra_config import HydraConfig
        from cnnlab.config.compose import CONFIG_DIR

        @hydra.main(config_path=CONFIG_DIR, config_name="train", version_base="1.3")
        def job(cfg):
            out = HydraConfig.get().runtime.output_dir
            os.makedirs(out, exist_ok=True)
            with open(os.path.join(out, "pid"), "w") as f:
                f.write(str(os.getpid()))

        job()
    """))
    done = subprocess.run([sys.executable, str(app), "-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2",
                           "seed=0,1", f"paths.output_root={tmp_path / 'out'}"], cwd=tmp_path, env=cli_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    sweeps = list((tmp_path / "out" / "multirun").glob("*/*"))
    assert len(sweeps) == 1, sweeps
    pids = {int((sweeps[0] / job / "pid").read_text()) for job in ("0", "1")}
    assert int(sweeps[0].name.rsplit("_", 1)[1]) not in pids  # named after the launcher, written by workers


def _sweep(tmp_path, launcher: list[str], env: dict) -> subprocess.CompletedProcess:
    """A 2-job sweep through the real CLI into the default sweep dir (.../multirun/<date>/<time>_${pid:})."""
    return subprocess.run([sys.executable, "-m", "cnnlab.train", "-m", *launcher, "seed=0,1", *TINY,
                           f"paths.output_root={tmp_path / 'out'}"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)


def _check_one_sweep_dir_with_every_job(tmp_path, done):
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    sweeps = list((tmp_path / "out" / "multirun").glob("*/*"))
    assert len(sweeps) == 1, sweeps  # every job resolved the launching process's ${pid:} and ${now:}
    sweep = sweeps[0]
    launching_pid = int(sweep.name.rsplit("_", 1)[1])
    for job in ("0", "1"):
        assert (sweep / job / "metrics.json").is_file()
        marker = json.loads((sweep / job / ".cnnlab-run.json").read_text())
        assert marker["pid"] != launching_pid  # the job ran in another process
    with open(sweep / "summary.csv", newline="") as f:
        assert sorted(row["run"] for row in csv.DictReader(f)) == ["0", "1"]
    assert str(sweep / "summary.md") in done.stdout
    return sweep


@pytest.mark.slow  # ~14 s on 2 cores: two trainings in loky workers
def test_a_joblib_sweep_runs_its_jobs_in_parallel_into_one_sweep_dir(tmp_path):
    env = {k: v for k, v in cli_env().items() if k != "OMP_NUM_THREADS"}  # joblib chooses the threads per job
    done = _sweep(tmp_path, ["hydra/launcher=parallel", "hydra.launcher.n_jobs=2"], env)
    sweep = _check_one_sweep_dir_with_every_job(tmp_path, done)
    for job in ("0", "1"):
        threads = json.loads((sweep / job / "environment.json").read_text())["torch_threads"]
        assert threads == max(1, joblib.cpu_count() // 2)


@pytest.mark.slow  # ~13 s on 2 cores: two submitit job processes
def test_a_submitit_local_sweep_runs_every_job_into_one_sweep_dir(tmp_path):
    done = _sweep(tmp_path, ["hydra/launcher=slurm_local"], dict(cli_env(), OMP_NUM_THREADS="1"))
    sweep = _check_one_sweep_dir_with_every_job(tmp_path, done)
    assert list((sweep / ".submitit").glob("*/*_log.out"))  # each job's console output, as on a cluster
