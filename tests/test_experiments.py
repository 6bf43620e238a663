"""Sweeps and comparisons as a user sees them: `cnnlab-train -m` leaves a summary of its jobs (failed ones
included), the value handed to sweepers is the validation metric, the HParams tab starts with the varied keys,
and `cnnlab-compare` tables and plots run dirs, sweep dirs and Optuna study dirs."""

from __future__ import annotations

import csv
import json
import shutil
import statistics

import optuna
import pytest
import yaml
from commands import run_in_process

from cnnlab.cli.compare import main as compare_main
from cnnlab.run.records import read_curve, read_run

TINY = ["model=lenet5", "data=digits", "trainer.limit_train_batches=2", "trainer.progress=none",
        "trainer.summary=none", "logger.histogram_every_n_epochs=0"]


def _multirun(cwd, sweep_dir, *overrides):
    return run_in_process("train", "-m", *overrides, *TINY, f"hydra.sweep.dir={sweep_dir}", cwd=cwd)


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """One real 2 x 2 grid (learning rate x seed) through the command line, shared by the tests below."""
    root = tmp_path_factory.mktemp("grid")
    sweep = root / "sweep"
    done = _multirun(root, sweep, "optimizer.lr=0.01,0.001", "seed=0,1", "trainer.max_epochs=2")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return sweep, done


def test_a_grid_sweep_summarises_every_job_best_first(grid):
    sweep, done = grid
    jobs = sorted(p.name for p in sweep.iterdir() if (p / "metrics.json").is_file())
    assert jobs == ["0", "1", "2", "3"]
    rows = _rows(sweep / "summary.csv")
    assert len(rows) == 4
    columns = list(rows[0])
    assert columns[:4] == ["run", "optimizer.lr", "seed", "best_val/loss"]  # only what varied, then metrics
    assert {(r["optimizer.lr"], r["seed"]) for r in rows} == {("0.01", "0"), ("0.01", "1"), ("0.001", "0"),
                                                              ("0.001", "1")}
    losses = [float(r["best_val/loss"]) for r in rows]
    assert losses == sorted(losses)  # val/loss is minimised: lowest first
    for row in rows:
        metrics = json.loads((sweep / row["run"] / "metrics.json").read_text())
        assert float(row["test/acc"]) == pytest.approx(metrics["test/acc"])
        assert row["status"] == "completed" and not row["error"]
    markdown = (sweep / "summary.md").read_text()
    assert "| optimizer.lr" in markdown and "Mean ± std over seeds" in markdown
    assert "summary:" in done.stdout and "optimizer.lr" in done.stdout


def test_the_seed_summary_is_the_mean_and_sample_std_of_each_setting(grid):
    sweep, _ = grid
    runs = _rows(sweep / "summary.csv")
    groups = _rows(sweep / "summary_seeds.csv")
    assert sorted(g["optimizer.lr"] for g in groups) == ["0.001", "0.01"] and "seed" not in groups[0]
    for group in groups:
        assert group["n"] == "2"
        for metric in ("best_val/loss", "test/acc"):
            values = [float(r[metric]) for r in runs if r["optimizer.lr"] == group["optimizer.lr"]]
            assert float(group[f"{metric} mean"]) == pytest.approx(statistics.fmean(values))
            assert float(group[f"{metric} std"]) == pytest.approx(statistics.stdev(values))


def _hparam_names(run_dir):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import plugin_data_pb2

    for events in run_dir.glob("events.out.tfevents.*"):
        for event in EventFileLoader(str(events)).Load():
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name != "hparams":
                    continue
                data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                if data.HasField("experiment"):
                    return [info.name for info in data.experiment.hparam_infos]
    return []


def test_the_hparams_tab_starts_with_the_keys_the_job_overrode(grid):
    sweep, _ = grid
    names = _hparam_names(sweep / "0")
    # The job's overrides in command-line order: the swept keys, then the fixed ones (a group brings its keys).
    assert names[:4] == ["optimizer.lr", "seed", "trainer.max_epochs", "model.name"]
    assert "data.name" in names and "task_name" in names[5:]


def test_a_failed_job_is_a_row_and_the_sweep_goes_on_then_exits_1(tmp_path):
    # max_epochs=0 is refused by the schema for the second job only.
    done = _multirun(tmp_path, tmp_path / "sweep", "trainer.max_epochs=1,0")
    assert done.returncode == 1, done.stderr[-3000:]
    assert "error: trainer.max_epochs=0" in done.stdout
    assert "1 of 2 jobs failed" in done.stderr and str(tmp_path / "sweep" / "summary.md") in done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert (tmp_path / "sweep" / "0" / "metrics.json").is_file()
    rows = _rows(tmp_path / "sweep" / "summary.csv")
    assert [(r["run"], r["trainer.max_epochs"], r["status"]) for r in rows] == [("0", "1", "completed"),
                                                                               ("1", "0", "failed")]
    assert "trainer.max_epochs=0 must be" in rows[1]["error"]
    assert read_run(tmp_path / "sweep" / "1").status == "failed"


def test_the_value_returned_to_sweepers_is_the_best_validation_metric(make_cfg):
    from cnnlab.cli.train import _hydra_main

    cfg = make_cfg(*TINY, "trainer.max_epochs=2", "trainer.monitor=val/acc")
    returned = _hydra_main(cfg)  # Hydra's decorator passes a given config straight to the task
    run_dir = cfg.paths.output_dir
    metrics = json.loads(open(f"{run_dir}/metrics.json").read())
    assert returned == metrics["best_val/acc"]
    # The event file stores float32: the best of the per-epoch validation accuracies, not a test metric.
    assert returned == pytest.approx(max(value for _, value in read_curve(run_dir, "val/acc")), rel=1e-6)


def test_compare_tables_and_plots_only_what_differs(grid, tmp_path, capsys):
    sweep, _ = grid
    # Jobs 0 and 2: the same seed, two learning rates.
    compare_main([str(sweep / "0"), str(sweep / "2"), "--out", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    rows = _rows(tmp_path / "out" / "compare.csv")
    assert list(rows[0])[:3] == ["run", "optimizer.lr", "best_val/loss"] and len(rows) == 2
    assert "optimizer.lr" in printed and "| seed" not in printed
    assert (tmp_path / "out" / "compare.md").is_file()
    png = tmp_path / "out" / "curves_val_loss.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_refuses_a_path_without_runs(tmp_path, capsys, caplog):
    with pytest.raises(SystemExit, match="^2$") as stopped:
        compare_main([str(tmp_path / "missing")])
    assert stopped.value.code == 2
    with pytest.raises(SystemExit, match="^2$") as stopped:
        compare_main([str(tmp_path)])
    assert stopped.value.code == 2
    # In a terminal the line goes to stderr; under pytest's logging it is logged (cnnlab.cli.common decides).
    reported = [line for line in capsys.readouterr().err.splitlines() + caplog.messages if line.startswith("error")]
    assert reported[0] == f"error: PATH {tmp_path / 'missing'}: no such file or directory"
    assert reported[1] == (f"error: PATH {tmp_path}: holds no cnnlab run (no metrics.json, "
                                               f"failure.json or config_resolved.yaml in it or in its "
                                               f"subdirectories); give a run dir, a sweep dir or a study dir")


def _study_dir(tmp_path, sweep, n_trials):
    """A study dir as cnnlab-tune leaves it: study.yaml, the journal, trial run dirs under trials/<number>/."""
    study_dir = tmp_path / "study"
    study_dir.mkdir()
    journal = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(study_dir / "study.journal")))
    study = optuna.create_study(study_name="lr", storage=journal, direction="minimize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: (t.suggest_float("lr", 1e-4, 1e-1, log=True) - 0.01) ** 2
                   + 0.1 * (t.suggest_categorical("opt", ["sgd", "adam"]) == "sgd"), n_trials=n_trials)
    (study_dir / "study.yaml").write_text(yaml.safe_dump({"study_name": "lr", "storage": None}))
    for number in range(min(n_trials, 4)):
        shutil.copytree(sweep / str(number), study_dir / "trials" / str(number))
    return study_dir


def test_compare_on_a_study_dir_plots_its_history_and_importances(grid, tmp_path, capsys):
    sweep, _ = grid
    from cnnlab.experiments.charts import MIN_IMPORTANCE_TRIALS

    study_dir = _study_dir(tmp_path, sweep, n_trials=MIN_IMPORTANCE_TRIALS)
    compare_main([str(study_dir)])
    printed = capsys.readouterr().out
    for name in ("compare.md", "compare.csv", "curves_val_loss.png", "optimization_history.png",
                 "param_importances.png"):
        assert (study_dir / name).is_file(), printed
    assert (study_dir / "compare.md").read_text().startswith("# Study lr")


def test_a_study_with_one_trial_has_no_importances_and_says_so(grid, tmp_path, capsys):
    sweep, _ = grid
    study_dir = _study_dir(tmp_path, sweep, n_trials=1)
    compare_main([str(study_dir), "--out", str(tmp_path / "out")])
    assert "no parameter importances" in capsys.readouterr().out
    assert (tmp_path / "out" / "optimization_history.png").is_file()
    assert not (tmp_path / "out" / "param_importances.png").exists()


def test_mean_std_digits_and_missing_std():
    from cnnlab.experiments.tables import mean_std

    assert mean_std(0.91234, 0.01234, 4) == "0.9123 ± 0.0123"
    assert mean_std(12.345, 0.55, 1) == "12.3 ± 0.6"
    assert mean_std(0.5, None, 4) == "0.5000"  # one seed: no std


def _study_with_pruned_trials(completed: int, pruned_at: tuple[int, ...] = ()) -> optuna.Study:
    """An in-memory study: `completed` finished trials, then one pruned trial per epoch in pruned_at, each having
    reported 0.5 + epoch / 10 after every epoch up to the one it was pruned after (as cnnlab-tune records them)."""
    study = optuna.create_study(study_name="mixed", direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    for i in range(completed):
        trial = study.ask()
        study.tell(trial, 0.9 - 0.01 * i + trial.suggest_float("lr", 1e-4, 1e-1, log=True))
    for epoch in pruned_at:
        trial = study.ask()
        trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        for e in range(1, epoch + 1):
            trial.report(0.5 + e / 10, e)
        trial.set_user_attr("pruned_at_epoch", epoch)
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    return study


def test_the_history_has_whole_trial_numbers_and_draws_pruned_trials_marked_by_their_epoch():
    from cnnlab.experiments.charts import history_figure

    study = _study_with_pruned_trials(3, pruned_at=(1, 2, 1))
    fig = history_figure(study)
    ax = fig.axes[0]
    fig.canvas.draw()
    low, high = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if low <= t <= high]
    assert ticks and all(float(t).is_integer() for t in ticks)
    points = {c.get_label(): c.get_offsets().tolist() for c in ax.collections}
    lrs = [t.params["lr"] for t in study.trials]
    assert points["completed (3)"] == [[0, 0.9 + lrs[0]], [1, 0.89 + lrs[1]], [2, 0.88 + lrs[2]]]
    assert points["pruned at epoch 1 (2 trials): the value then"] == [[3, 0.6], [5, 0.6]]
    assert points["pruned at epoch 2 (1 trial): the value then"] == [[4, 0.7]]
    markers = [c.get_paths()[0].vertices.tolist() for c in ax.collections if c.get_label().startswith("pruned")]
    assert len(markers) == 2 and markers[0] != markers[1]  # a marker of its own for each pruning epoch
    assert {t.get_text() for t in fig.legends[0].get_texts()} == {*points, "best completed so far"}
    assert ax.get_title() == "Optimisation history of mixed: 3 completed, 3 pruned of 6 trials"
    fig.clf()


def test_importances_are_refused_below_the_minimum_of_completed_trials_and_count_them_above():
    from cnnlab.experiments.charts import MIN_IMPORTANCE_TRIALS, importances_figure

    few = _study_with_pruned_trials(MIN_IMPORTANCE_TRIALS - 1, pruned_at=(1, 1, 1))
    fig, note = importances_figure(few)
    assert fig is None and note == (f"no parameter importances: {MIN_IMPORTANCE_TRIALS - 1} completed trials, "
                                    f"fewer than the {MIN_IMPORTANCE_TRIALS} they need to be more than noise "
                                    f"(pruned and failed trials have no objective value); run more trials")
    enough = _study_with_pruned_trials(MIN_IMPORTANCE_TRIALS, pruned_at=(1,))
    fig, note = importances_figure(enough)
    assert note is None
    assert fig.axes[0].get_title() == (f"Parameter importances from {MIN_IMPORTANCE_TRIALS} completed trials of "
                                       f"{MIN_IMPORTANCE_TRIALS + 1} (pruned and failed ones have no value)")
    fig.clf()


def test_a_pruned_run_is_marked_in_the_curves_with_the_epoch_it_was_pruned_after(grid, tmp_path):
    from cnnlab.experiments.charts import curves_figure
    from cnnlab.run.records import write_failure

    sweep, _ = grid
    shutil.copytree(sweep / "1", tmp_path / "pruned")
    write_failure(tmp_path / "pruned", "pruned after epoch 1", status="pruned", pruned_at_epoch=1)
    records = [read_run(sweep / "0"), read_run(tmp_path / "pruned")]
    fig = curves_figure(records, ["a", "b"], "val/loss")
    ax = fig.axes[0]
    curves = {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}
    assert set(curves) == {"a", "b (pruned at epoch 1)"}
    crosses = [line for line in ax.get_lines() if line.get_marker() == "X"]
    last = curves["b (pruned at epoch 1)"].get_xydata()[-1:].tolist()
    assert len(crosses) == 1 and crosses[0].get_xydata().tolist() == last  # the cross where it stopped
    shown = ax.get_legend()
    legend = {text.get_text(): handle for text, handle in zip(shown.get_texts(), shown.legend_handles)}
    assert legend["b (pruned at epoch 1)"].get_marker() == "X" and legend["a"].get_marker() == "o"
    assert ax.get_title() == "val/loss per epoch (2 runs, 1 pruned; X: where a pruned run stopped)"
    fig.clf()
