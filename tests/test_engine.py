"""The training engine's parts: callback moments, the loader protocol, the tracker's own state, and the rule that
no object's private methods are called from outside it."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from cnnlab.data.loaders import DataLoaderAdapter, TensorLoader, TransformDataset
from cnnlab.engine.callbacks import NOTHING_KEPT, Callback, overrides
from cnnlab.engine.evaluation import evaluate_split
from cnnlab.engine.run_callbacks import CheckpointsOfRankZero, EarlyStopping, ModelCheckpoint, ProgressDisplay
from cnnlab.engine.metrics_csv import MetricsCSV
from cnnlab.engine.task import TrainLoader, reported_topk
from cnnlab.engine.metrics import MetricTracker
from cnnlab.run.lifecycle import prepare

SRC = Path(__file__).resolve().parents[1] / "src" / "cnnlab"


class Recorder(Callback):
    """Records every moment it sees, with the trainer state a callback would read."""

    def __init__(self):
        self.seen = []

    def on_fit_start(self, trainer):
        self.seen.append(("fit_start", trainer.global_step))

    def on_train_epoch_start(self, trainer, epoch):
        self.seen.append(("epoch_start", epoch, trainer.epoch_steps, trainer.first_step))

    def on_train_batch_end(self, trainer, batch, outputs, step):
        loss, logits = outputs
        assert logits.shape[0] == batch[0].shape[0] and trainer.tracker.count > 0
        self.seen.append(("batch_end", step, trainer.global_step))

    def on_epoch_end(self, trainer, metrics):
        assert trainer.history[-1] is metrics and trainer.epoch == metrics["epoch"]
        self.seen.append(("epoch_end", metrics["epoch"], sorted(k for k in metrics if k.startswith("val/"))))

    def on_fit_end(self, trainer):
        self.seen.append(("fit_end", trainer.epoch))

    def on_test_end(self, trainer, metrics, confusion, classes):
        self.seen.append(("test_end", "test/acc" in metrics, tuple(confusion.shape), len(classes)))

    def teardown(self, trainer):
        self.seen.append(("teardown",))


class StopAfter(Callback):
    """Ends training after the given epoch (as a search trial's pruning would)."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, trainer, metrics):
        if metrics["epoch"] >= self.epoch:
            trainer.should_stop = True


def test_callbacks_are_called_at_their_moments_in_order(make_cfg):
    run = prepare(make_cfg("trainer.max_epochs=2", "trainer.limit_train_batches=3", "logger=none"), overrides=[])
    recorder = Recorder()
    run.trainer.callbacks.append(recorder)
    run.trainer.fit(run.data.train, run.data.val)
    run.trainer.test(run.data.test, run.data.info.classes)
    run.trainer.teardown()
    val = ["val/acc", "val/acc_best", "val/acc_top5", "val/loss"]
    steps = [("batch_end", s, 3 * (e - 1) + s + 1) for e in (1, 2) for s in range(3)]
    assert recorder.seen == [
        ("fit_start", 0),
        ("epoch_start", 1, 3, 0), *steps[:3], ("epoch_end", 1, val),
        ("epoch_start", 2, 3, 0), *steps[3:], ("epoch_end", 2, val),
        ("fit_end", 2),
        ("test_end", True, (10, 10), 10),
        ("teardown",),
    ]


def test_only_callbacks_with_per_step_work_are_called_per_step(make_cfg):
    """The built-in list: the progress display has per-step work, checkpoints, metrics.csv and early stopping do
    not."""
    run = prepare(make_cfg("trainer.max_epochs=1", "trainer.limit_train_batches=2", "logger=none",
                           "trainer.early_stopping.enabled=true"), overrides=[])
    kinds = [type(cb) for cb in run.trainer.callbacks]
    assert kinds == [ModelCheckpoint, MetricsCSV, ProgressDisplay, EarlyStopping]
    assert [overrides(cb, "on_train_batch_end") for cb in run.trainer.callbacks] == [False, False, True, False]
    assert not overrides(StopAfter(1), "on_train_batch_end") and overrides(Recorder(), "on_train_batch_end")
    run.trainer.teardown()


def test_a_callback_can_end_training(make_cfg, tmp_path):
    run = prepare(make_cfg("trainer.max_epochs=4", "trainer.limit_train_batches=2", "logger=none"), overrides=[])
    run.trainer.callbacks.append(StopAfter(2))
    history = run.trainer.fit(run.data.train, run.data.val)
    run.trainer.teardown()
    assert [m["epoch"] for m in history] == [1, 2] and run.trainer.stopped_early
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 2


def test_the_trainers_test_pass_reports_what_cnnlab_eval_reports(make_cfg):
    """One model and loader: Trainer.test and the evaluation cnnlab-eval runs (evaluate_split, called as
    cli/evaluate.py calls it) give the same metrics, per-class scores and confusion matrix."""
    run = prepare(make_cfg("trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.topk=[3]",
                           "trainer.test_with=last", "logger=none"), overrides=[])
    run.trainer.fit(run.data.train, run.data.val)
    classes = run.data.info.classes
    tcfg = run.cfg.trainer
    report = evaluate_split(run.model, run.data.test, run.trainer.task.loss, "test", list(classes),
                            ks=reported_topk(tcfg.topk), device=run.trainer.device,
                            precision=run.trainer.context.precision)
    metrics = run.trainer.test(run.data.test, classes)
    run.trainer.teardown()
    assert metrics == {**report.metrics, **report.per_class, "test/confusion_matrix": report.confusion.tolist()}
    assert {"test/loss", "test/acc", "test/acc_top3", "test/per_class_acc"} <= set(metrics)
    assert int(report.confusion.sum()) == run.data.sizes["test"]


def test_both_loaders_implement_the_train_loader_protocol():
    images = torch.randint(0, 256, (10, 1, 4, 4), dtype=torch.uint8)
    labels = torch.arange(10) % 3
    tensor = TensorLoader(images, labels, 4, mean=[0.5], std=[0.25], shuffle=True, seed=1)
    adapter = DataLoaderAdapter(TransformDataset(images, labels), 4, mean=[0.5], std=[0.25], shuffle=True, seed=1,
                                device="cpu")
    for loader in (tensor, adapter):
        assert isinstance(loader, TrainLoader)
        assert len(loader) == 3 and loader.dataset_size == 10 and loader.skipped == 0
        loader.set_epoch(2)
        batches = list(loader)
        assert len(batches) == 3 and batches[0][0].dtype == torch.float32
        assert loader.state_dict()["epoch"] == 2


def test_tracker_state_round_trip():
    a = MetricTracker((1,), "cpu")
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    a.update(torch.tensor(0.25), logits, torch.tensor([0, 1, 1]))
    state = a.state_dict()
    assert state == {"loss_sum": 0.75, "correct": state["correct"], "count": 3} and state["correct"].tolist() == [2]
    b = MetricTracker((1,), "cpu")
    b.load_state_dict(state)
    for tracker in (a, b):
        tracker.update(torch.tensor(0.5), logits[:1], torch.tensor([0]))
    assert a.compute("train") == b.compute("train") == {"train/loss": 0.3125, "train/acc": 0.75}
    assert b.running() == (0.3125, 0.75)


def test_no_private_method_of_another_object_is_called():
    """`obj._method(...)` only as self._method / cls._method: a private method is its own object's business
    (os._exit is public: the exit that skips cleanup, as a forked worker must)."""
    call = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:\(\))?\.(_[A-Za-z0-9][A-Za-z0-9_]*)\(")
    found = []
    for path in sorted(SRC.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            for owner, name in call.findall(line.split("#")[0]):
                if owner not in ("self", "cls") and not name.startswith("__") and f"{owner}.{name}" != "os._exit":
                    found.append(f"{path.relative_to(SRC)}:{number}: {owner}.{name}(")
    assert not found, found


def test_the_other_processes_name_rank_zeros_resume_point_and_write_nothing(tmp_path):
    for save_last, path in ((True, tmp_path / "last.ckpt"), (False, None)):
        keeper = CheckpointsOfRankZero(tmp_path, save_last)
        assert keeper.resume_path == path and keeper.save_resume_point({"epoch": 1}) == path
        keeper.wait()
        assert keeper.kept() == NOTHING_KEPT and list(tmp_path.iterdir()) == []


def test_no_engine_module_imports_one_that_imports_it_back():
    """Every import statement counts (under TYPE_CHECKING and inside functions too); the Trainer's modules
    import the callback base only, never the run's concrete callbacks."""
    import ast

    engine = SRC / "engine"
    imports = {}
    for path in engine.glob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cnnlab.engine"):
                names |= {node.module.removeprefix("cnnlab.engine").lstrip(".") or a.name for a in node.names}
            elif isinstance(node, ast.Import):
                names |= {a.name.removeprefix("cnnlab.engine.") for a in node.names}
        imports[path.stem] = names
    mutual = sorted((a, b) for a in imports for b in imports[a] if a in imports.get(b, ()))
    assert not mutual, mutual
    for loop in ("trainer", "stepping", "interruption", "evaluation"):
        assert "run_callbacks" not in imports[loop]
