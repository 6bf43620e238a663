"""cnnlab-tune: searches whose trials are real training runs, pruned, continued after a kill, shared by workers,
and every kind of bad input refused before the first trial."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import yaml
from commands import run_in_process
from conftest import cli_env
from optuna.trial import TrialState

from cnnlab.config.compose import compose_config
from cnnlab.errors import ConfigError
from cnnlab.run.records import read_run
from cnnlab.search.plan import plan_search
from cnnlab.search.storage import open_storage
from cnnlab.search.study import build_pruner
from cnnlab.search.trial import PruningReport
from cnnlab.search.worker import run_workers

# Tiny trials: the 8x8 digits, a few batches an epoch, nothing written that the tests do not read.
TINY = ["data=digits", "trainer.limit_train_batches=3", "logger.histogram_every_n_epochs=0", "logger.images=false",
        "logger.graph=false"]


# A search of lr alone: the checks before the first trial compose a trial config for each end of every range.
LR_ONLY = ["~search.space.weight_decay", "~search.space.batch_size"]


def tune(tmp_path: Path, *args: str, timeout: int = 240, wait: bool = True):
    """cnnlab-tune run in this process (wait) or started as a process of its own to be killed (not wait)."""
    args = [*TINY, f"paths.output_root={tmp_path}", *args]
    if wait:
        return run_in_process("tune", *args, cwd=tmp_path, timeout=timeout)
    return subprocess.Popen([sys.executable, "-m", "cnnlab.cli.tune", *args], cwd=tmp_path,
                            env=dict(cli_env(), OMP_NUM_THREADS="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def run_study(tmp_path: Path, *args: str, study_dir: Path | None = None) -> Path:
    """The search in this process (what cnnlab-tune does after Hydra composed its config); returns the study dir."""
    overrides = [*TINY, *args]
    cfg = compose_config(overrides, study_dir or tmp_path / "study", config_name="tune")
    plan, _, _ = plan_search(cfg, overrides)
    run_workers(plan, 1)
    return plan.study_dir


def load(study_dir: Path, storage: str | None = None) -> optuna.Study:
    name = yaml.safe_load((study_dir / "study.yaml").read_text())["study_name"]
    return optuna.load_study(study_name=name, storage=open_storage(storage, study_dir))


def test_a_log_scale_search_with_hyperband_prunes_and_keeps_every_trial_as_a_run(tmp_path):
    done = tune(tmp_path, "search.study_name=hb", "search.n_trials=6", "search.sampler.name=random",
                "search.pruner.min_resource=1", "trainer.max_epochs=4", *LR_ONLY, "search.space.lr.low=1.0e-5", "search.space.lr.high=0.3")
    assert done.returncode == 0, done.stdout + done.stderr
    study_dir = tmp_path / "search" / "hb"
    study = load(study_dir)
    states = [t.state for t in study.trials]
    assert len(states) == 6 and TrialState.RUNNING not in states
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert pruned, f"no trial was pruned: {[(t.state, t.values) for t in study.trials]}"
    for t in study.trials:  # every trial is an ordinary run dir whose config holds its sampled lr
        record = read_run(Path(t.user_attrs["run_dir"]))
        assert record.config["optimizer.lr"] == pytest.approx(t.params["lr"])
        assert any(Path(t.user_attrs["run_dir"]).glob("events.out.tfevents.*"))
    for t in pruned:  # pruned: stopped early, files kept, the epoch said
        record = read_run(Path(t.user_attrs["run_dir"]))
        assert record.status == "pruned"
        assert record.metrics["epochs_completed"] == t.user_attrs["pruned_at_epoch"] < 4
    # the summary's best is the storage's best
    best_row = (study_dir / "summary.csv").read_text().splitlines()[1]
    assert best_row.startswith(f"{study.best_trial.number:04d}")
    assert f"best: trial {study.best_trial.number}," in done.stdout


def test_asha_stops_poor_trials_at_its_first_rung_and_never_a_trial_after_its_last_epoch(tmp_path):
    # rungs after 1 and 3 epochs; 3 is also the last epoch, where a pruned trial would be a finished run lost
    study_dir = run_study(tmp_path, "search.study_name=asha", "search.n_trials=5", "search.sampler.name=random",
                          "search.pruner.name=asha", "search.pruner.min_resource=1",
                          "search.pruner.reduction_factor=3", "trainer.max_epochs=3", *LR_ONLY,
                          "search.space.lr.low=1.0e-5", "search.space.lr.high=0.3")
    trials = load(study_dir).trials
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned, f"no trial was pruned: {[(t.state, t.values) for t in trials]}"
    for t in pruned:  # stopped after the first rung: one epoch trained, not three
        assert t.user_attrs["pruned_at_epoch"] == 1 and max(t.intermediate_values) == 1
        record = read_run(Path(t.user_attrs["run_dir"]))
        assert record.status == "pruned" and record.metrics["epochs_completed"] == 1
    finished = [t for t in trials if t.state == TrialState.COMPLETE]
    assert finished and all(max(t.intermediate_values) == 3 for t in finished)
    assert len(pruned) + len(finished) == 5


def test_a_trial_is_never_pruned_after_its_last_epoch():
    """Hyperband's and ASHA's top rung can be the last epoch (1/3/9 with max_epochs=9): pruning there would drop a
    finished run's result, so the pruner is asked after every epoch but the last."""
    class Trial:
        number = 0
        reported = []

        def report(self, value, step):
            self.reported.append(step)

        def should_prune(self):
            return True

    trainer = SimpleNamespace(epoch=2, should_stop=False, options=SimpleNamespace(max_epochs=3))
    report = PruningReport(Trial(), "val/acc")
    trainer.epoch = 3
    report.on_epoch_end(trainer, {"val/acc": 0.5})
    assert not trainer.should_stop and report.pruned_at is None and Trial.reported == [3]
    trainer.epoch = 2
    report.on_epoch_end(trainer, {"val/acc": 0.5})
    assert trainer.should_stop and report.pruned_at == 2


def test_asha_and_hyperband_are_built_from_the_search_section():
    search = {"pruner": {"name": "asha", "min_resource": 2, "reduction_factor": 4, "min_early_stopping_rate": 1,
                         "n_startup_trials": 5}}
    asha = build_pruner(search, 9)
    assert isinstance(asha, optuna.pruners.SuccessiveHalvingPruner)
    assert (asha._min_resource, asha._reduction_factor, asha._min_early_stopping_rate) == (2, 4, 1)
    search["pruner"]["name"] = "hyperband"
    assert isinstance(build_pruner(search, 9), optuna.pruners.HyperbandPruner)


@pytest.mark.slow  # a killed command, then the study again; tests/test_search_storage.py recovers killed workers fast
def test_a_study_killed_mid_trial_continues_with_only_the_remaining_trials(tmp_path):
    args = ["search.study_name=kill", "search.n_trials=3", "search.pruner.name=none", "trainer.max_epochs=2",
            "trainer.limit_train_batches=10", *LR_ONLY]
    proc = tune(tmp_path, *args, wait=False)
    second = tmp_path / "search" / "kill" / "trials" / "0001" / "train.log"
    deadline = time.monotonic() + 120
    while not second.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # inside trial 1's training
    proc.kill()
    proc.wait()
    study_dir = tmp_path / "search" / "kill"
    assert [t.state for t in load(study_dir).trials][:2] == [TrialState.COMPLETE, TrialState.RUNNING]

    run_study(tmp_path, *args, study_dir=study_dir)  # the same search again, here in this process
    trials = load(study_dir).trials
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    assert trials[1].state == TrialState.FAIL and trials[1].user_attrs["interrupted"] is True
    assert "is gone" in trials[1].user_attrs["fail_reason"]
    assert [t.state for t in trials].count(TrialState.COMPLETE) == 3  # the budget: 3 trials that count
    assert TrialState.RUNNING not in [t.state for t in trials]
    assert trials[0].params != trials[2].params  # the continued study did not draw the first values again


def _interrupt_first_trial(tmp_path: Path, args: list[str]) -> subprocess.Popen:
    proc = tune(tmp_path, *args, wait=False)
    first = tmp_path / "search" / "intr" / "trials" / "0000" / "train.log"
    deadline = time.monotonic() + 120
    while not (first.exists() and "model lenet5" in first.read_text()) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0]  # ended before its first trial trained
        time.sleep(0.05)
    assert "model lenet5" in first.read_text(), "the first trial did not start training within 120 s"
    proc.send_signal(signal.SIGINT)
    return proc


CTRL_C = ["search.study_name=intr", "search.n_trials=1", "search.pruner.name=none", "trainer.max_epochs=2",
          "trainer.limit_train_batches=30", *LR_ONLY]


@pytest.mark.slow  # a real SIGINT to a study's process (4 s); test_api and test_faults stop runs by Ctrl-C by default
def test_ctrl_c_stops_the_study_with_the_trial_recorded_as_interrupted(tmp_path):
    proc = _interrupt_first_trial(tmp_path, CTRL_C)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "Run the same cnnlab-tune command again to continue the study" in out
    assert "the interrupted trial stays failed" in out  # what a rerun does with it (search.retry_interrupted)
    assert "trainer.resume" not in out  # a study is not continued by resuming one trial's run
    interrupted = load(tmp_path / "search" / "intr").trials[0]
    assert interrupted.state == TrialState.FAIL and interrupted.user_attrs["interrupted"] is True
    assert read_run(Path(interrupted.user_attrs["run_dir"])).status == "failed"


@pytest.mark.slow  # two CLI runs; the retry itself is covered fast in tests/test_search_storage.py
def test_a_rerun_after_ctrl_c_retries_the_interrupted_trial(tmp_path):
    args = [*CTRL_C, "search.retry_interrupted=true"]
    proc = _interrupt_first_trial(tmp_path, args)
    proc.communicate(timeout=120)
    assert proc.returncode == 130
    study_dir = tmp_path / "search" / "intr"
    interrupted = load(study_dir).trials[0]
    done = tune(tmp_path, *args)
    assert done.returncode == 0, done.stdout + done.stderr
    trials = load(study_dir).trials
    retried = [t for t in trials if t.user_attrs.get("retry_of") == 0]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE
    assert retried[0].params == interrupted.params
    assert [t.state for t in trials].count(TrialState.COMPLETE) == 1


def test_a_diverging_trial_is_a_failed_trial_and_the_study_goes_on(tmp_path):
    study_dir = run_study(tmp_path, "search.sampler.name=grid", "search.pruner.name=none",
                          "optimizer=sgd", "scheduler=none", "trainer.max_epochs=2", "~search.space.weight_decay",
                          "~search.space.batch_size", "~search.space.lr",
                          "+search.space.lr={key: optimizer.lr, type: categorical, choices: [1.0e+12, 0.05]}")
    by_lr = {t.params["lr"]: t for t in load(study_dir).trials}
    assert by_lr[1e12].state == TrialState.FAIL
    assert "not finite" in by_lr[1e12].user_attrs["fail_reason"] or "nan" in by_lr[1e12].user_attrs["fail_reason"]
    assert by_lr[0.05].state == TrialState.COMPLETE
    assert read_run(Path(by_lr[1e12].user_attrs["run_dir"])).status == "failed"


def test_group_choices_and_conditional_keys(tmp_path):
    """optimizer is a config-group choice; momentum is suggested only where the chosen optimizer has it."""
    study_dir = run_study(tmp_path, "search=optimizer_choice", "search.sampler.name=grid", "search.pruner.name=none",
                          "trainer.max_epochs=1", "~search.space.lr", "search.space.optimizer.choices=[sgd,adam]",
                          "search.space.momentum.high=0.9", "+search.space.momentum.step=0.9")
    trials = load(study_dir).trials
    # the grid is 2 optimizers x 2 momenta; adam has no momentum, so its two grid points train the same run
    assert sorted(t.params["optimizer"] for t in trials) == ["adam", "adam", "sgd", "sgd"]
    assert sorted(t.params["momentum"] for t in trials if t.params["optimizer"] == "sgd") == [0.0, 0.9]
    for t in trials:
        config = read_run(Path(t.user_attrs["run_dir"])).config
        assert config["optimizer._target_"] == {"sgd": "torch.optim.SGD", "adam": "torch.optim.Adam"}[t.params["optimizer"]]
        if t.params["optimizer"] == "sgd":
            assert config["optimizer.momentum"] == t.params["momentum"]
        else:
            assert "momentum" not in t.params


@pytest.mark.parametrize("args, says", [
    (["search.space.lr.key=optimizer.learning_rate", *LR_ONLY], "did you mean optimizer.lr?"),
    (["search.space.lr.low=0.5"], "low=0.5 must be below high=0.1"),
    (["search.space.lr.low=0"], "log=true needs low > 0"),
    (["search.space.lr.log=false", "search.space.lr.low=-1.0", *LR_ONLY], "with optimizer.lr=-1.0, optimizer.lr=-1.0 must be > 0"),
    (["search.sampler.name=bayes"], "search.sampler.name='bayes' is not accepted"),
    (["search.pruner.name=sha"], "search.pruner.name='sha' is not accepted"),
    (["search.objective.metric=val/f1"], "search.objective.metric=val/f1 is not a metric a run logs"),
    (["search.sampler.name=grid", *LR_ONLY], "search.sampler.name=grid needs every parameter to have finitely many values"),
    (["search=optimizer_choice", "search.space.optimizer.choices=[sgd,lamb]"], "lamb is not an option of the config group optimizer"),
    (["+search.space.x={key: trainer.max_epochs, type: int, low: 1, high: 3, choices: [1]}"], "choices is for type=categorical"),
])
def test_bad_search_input_is_refused_before_any_trial(tmp_path, args, says):
    cfg = compose_config([*TINY, *args], tmp_path / "study", config_name="tune")
    with pytest.raises(ConfigError, match=re.escape(says)) as refused:
        plan_search(cfg, [*TINY, *args])
    assert says in str(refused.value)
    assert not (tmp_path / "study" / "trials").exists()


def test_bad_input_on_the_command_line_is_one_line_and_exit_2(tmp_path):
    done = tune(tmp_path, *LR_ONLY, "search.storage=postgresql://u:secret@127.0.0.1:1/db")
    said = done.stdout + done.stderr
    assert done.returncode == 2 and said.count("error:") == 1 and "search.storage" in said, said
    assert "secret" not in said
    assert not (tmp_path / "search" / "lenet_lr_wd_bs" / "trials").exists()


@pytest.mark.slow  # two studies (2.6 s)
def test_a_study_name_holding_another_space_or_direction_is_refused(tmp_path):
    study_dir = tmp_path / "study"
    first = compose_config([*TINY, *LR_ONLY, "search.n_trials=1"], study_dir, config_name="tune")
    plan_search(first, [*TINY, *LR_ONLY])
    for change, says in (("search.space.lr.high=0.5", "another search space (parameters that differ: lr)"),
                         ("search.objective.metric=val/loss", "objective val/acc (maximize), not val/loss (minimize)")):
        cfg = compose_config([*TINY, *LR_ONLY, change], study_dir, config_name="tune")
        with pytest.raises(ConfigError, match=r"search\.study_name=lenet_lr_wd_bs: this study exists with") as refused:
            plan_search(cfg, [*TINY, *LR_ONLY, change])
        assert says in str(refused.value)


@pytest.mark.slow  # composes every shipped search's trial configs (7 s); the other plan tests run by default
def test_the_shipped_searches_plan_without_problems(tmp_path):
    for name in sorted(p.stem for p in (Path(__file__).parents[1] / "configs" / "search").glob("*.yaml")):
        cfg = compose_config([f"search={name}"], tmp_path / name, config_name="tune")
        plan, study, continued = plan_search(cfg, [f"search={name}"])
        assert not continued and plan.params and study.direction.name == "MAXIMIZE"


@pytest.mark.slow  # two worker processes on one PostgreSQL study; tests/test_search_storage.py covers the storage fast
def test_postgres_storage_shared_by_two_workers(tmp_path, postgres_url):
    done = tune(tmp_path, "search.study_name=pg", f"search.storage='{postgres_url}'", "search.n_trials=4",
                "search.workers=2", "search.pruner.name=none", "trainer.max_epochs=1")
    assert done.returncode == 0, done.stdout + done.stderr
    trials = load(tmp_path / "search" / "pg", postgres_url).trials
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert {t.user_attrs["worker_pid"] for t in trials}.__len__() == 2  # both workers ran trials
    assert not os.path.exists(tmp_path / "search" / "pg" / "study.journal")


def test_a_space_key_the_search_file_leaves_out_is_added_with_plus(tmp_path):
    from cnnlab.config.overrides import check_override_keys
    from cnnlab.config.compose import config_dir

    with pytest.raises(ConfigError, match=r"add it with \+search\.space\.lr\.step=0\.1"):
        check_override_keys(["search.space.lr.step=0.1"], config_dir(), "tune")
    with pytest.raises(ConfigError, match=r"did you mean search\.space\.lr\.low\?"):
        check_override_keys(["search.space.lr.lo=0.1"], config_dir(), "tune")
    check_override_keys(["+search.space.lr.step=0.1", "search.space.lr.low=0.001"], config_dir(), "tune")
