"""The engine end to end, in process: a model learns, runs reproduce, overrides reach the objects built."""

from __future__ import annotations

import json
import math

import pytest
import torch

from cnnlab.run.lifecycle import prepare, train


def test_lenet_really_learns(trained_run):
    _, metrics = trained_run  # the default composition, three epochs (shared with tests that read its outputs)
    # Chance is 10%; three epochs on 4,000 digits should clear 90% on held-out test digits.
    assert metrics["test/acc"] > 0.90
    assert metrics["test/loss"] < 0.5
    assert 0 <= metrics["test/acc"] <= metrics["test/acc_top5"] <= 1
    assert metrics["epochs_completed"] == 3


@pytest.mark.slow  # 20 full epochs; test_lenet_really_learns checks the same composition learns, in 3
def test_default_run_reaches_the_documented_accuracy(make_cfg):
    """The README's promise: the default composition, unchanged but for the console, tops 97.5% on the test digits."""
    metrics = train(make_cfg("trainer.max_epochs=20"), overrides=[])
    assert metrics["test/acc"] >= 0.975
    assert metrics["epochs_completed"] == 20


def test_same_seed_same_metrics_on_cpu(make_cfg):
    small = ["data=digits", "trainer.limit_train_batches=10"]  # LeNet-5 on the 1,797 bundled digits
    a = train(make_cfg(*small, run="a"), overrides=[])
    b = train(make_cfg(*small, run="b"), overrides=[])
    c = train(make_cfg(*small, "seed=7", run="c"), overrides=[])
    for key in ("test/loss", "test/acc", "val/acc_best"):
        assert a[key] == b[key], key
    assert a["test/loss"] != c["test/loss"]


def test_run_dir_holds_everything(trained_run):
    run, metrics = trained_run  # a real run of the default composition, only read here
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "checkpoints" / "best.ckpt").is_file()
    assert list(run.glob("events.out.tfevents.*"))
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["test/acc"] == metrics["test/acc"]
    assert len(saved["test/confusion_matrix"]) == 10
    assert set(saved["test/per_class_acc"]) == {str(d) for d in range(10)}
    env = json.loads((run / "environment.json").read_text())
    from importlib.metadata import version

    assert env["packages"]["torch"] == version("torch") and torch.__version__.startswith(version("torch").split("+")[0])
    assert env["device"] == "cpu"
    assert "git" in env
    assert "model:" in (run / "config_resolved.yaml").read_text()


def test_cli_overrides_reach_the_objects_built(make_cfg):
    run = prepare(make_cfg("optimizer=sgd", "optimizer.lr=0.123", "optimizer.momentum=0.5", "optimizer.nesterov=true",
                           "scheduler=step", "scheduler.step_size=3", "data.batch_size=32", "model.activation=tanh",
                           "model.pool=avg", "trainer.label_smoothing=0.1"), overrides=[])
    opt = run.trainer.task.optimizer
    assert isinstance(opt, torch.optim.SGD)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.123)
    assert opt.param_groups[0]["momentum"] == 0.5 and opt.param_groups[0]["nesterov"] is True
    assert isinstance(run.trainer.task.schedule.scheduler, torch.optim.lr_scheduler.StepLR)
    assert run.trainer.task.schedule.scheduler.step_size == 3
    assert run.data.train.batch_size == 32
    kinds = {type(m) for m in run.model.modules()}
    assert torch.nn.Tanh in kinds and torch.nn.AvgPool2d in kinds and torch.nn.ReLU not in kinds
    assert run.trainer.task.loss.smoothing == 0.1
    run.tb.close()


def test_weight_decay_can_spare_biases(make_cfg):
    run = prepare(make_cfg("optimizer.weight_decay=0.01", "optimizer.decay_norm_and_bias=false"), overrides=[])
    groups = run.trainer.task.optimizer.param_groups
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0]
    assert all(p.ndim > 1 for p in groups[0]["params"]) and all(p.ndim == 1 for p in groups[1]["params"])
    run.tb.close()
    run = prepare(make_cfg("optimizer.weight_decay=0.01", "optimizer.decay_norm_and_bias=true", run="r2"),
                  overrides=[])
    assert len(run.trainer.task.optimizer.param_groups) == 1
    run.tb.close()


OPTIMIZERS = ["sgd", "adagrad", "rmsprop", "adam", "adamw"]
SCHEDULERS = ["none", "step", "multistep", "exponential", "cosine", "onecycle", "plateau"]


@pytest.fixture(scope="module")
def group_configs(tmp_path_factory):
    """{("optimizer" | "scheduler", option): its composed section}: seven compositions cover all twelve options
    (each group composes on its own, so a pair's sections are those of a run that selects both)."""
    from conftest import FAST, compose_cfg

    sections = {}
    for i, scheduler in enumerate(SCHEDULERS):
        optimizer = OPTIMIZERS[i % len(OPTIMIZERS)]
        cfg = compose_cfg(tmp_path_factory.mktemp("groups") / "run", *FAST, f"optimizer={optimizer}",
                          f"scheduler={scheduler}", "scheduler.warmup_epochs=1", "trainer.max_epochs=3")
        sections["optimizer", optimizer], sections["scheduler", scheduler] = cfg.optimizer, cfg.scheduler
    return sections


@pytest.mark.parametrize("scheduler", SCHEDULERS)
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_optimizer_scheduler_pair_steps_and_resumes(group_configs, optimizer, scheduler):
    """Each pair built from its YAML files as a run builds it (warm-up epoch, then the torch scheduler; plateau fed
    the monitored metric), stepped like the training loop on a small model: the loss falls, the rate stays finite,
    and the optimizer and schedule state saved after epoch 1 (as a checkpoint, read back weights-only) continues
    exactly as the uninterrupted pair does. The trainer end to end: test_a_few_pairs_train_end_to_end."""
    import io

    from cnnlab.engine.optim import build_optimizer, build_schedule

    optimizer_cfg, scheduler_cfg = group_configs["optimizer", optimizer], group_configs["scheduler", scheduler]
    epochs, steps = 3, 4
    torch.manual_seed(0)
    x, y = torch.randn(32, 8), torch.arange(32) % 3

    def build():
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(),
                                    torch.nn.Linear(16, 3))
        optim = build_optimizer(optimizer_cfg, model)
        return model, optim, build_schedule(scheduler_cfg, optim, max_epochs=epochs, steps_per_epoch=steps,
                                            monitor_mode="min")

    def run_epochs(model, optim, schedule, first, last):
        losses, lrs = [], []
        for _ in range(first, last + 1):
            for _ in range(steps):
                loss = torch.nn.functional.cross_entropy(model(x), y)
                optim.zero_grad(set_to_none=True)
                loss.backward()
                optim.step()
                schedule.step_batch()
                losses.append(loss.item())
            lrs.append(schedule.lr())
            schedule.step_epoch(losses[-1])
        return losses, lrs

    torch.manual_seed(1)
    model, optim, schedule = build()
    head, head_lrs = run_epochs(model, optim, schedule, 1, 1)
    saved = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optim.state_dict(), "schedule": schedule.state_dict()}, saved)
    tail, tail_lrs = run_epochs(model, optim, schedule, 2, epochs)
    losses, lrs = head + tail, head_lrs + tail_lrs
    assert all(math.isfinite(v) for v in losses) and all(math.isfinite(lr) and lr >= 0 for lr in lrs)
    assert losses[-1] < losses[0], (optimizer, scheduler, losses)

    saved.seek(0)
    state = torch.load(saved, weights_only=True)
    torch.manual_seed(2)  # other initial weights: all that continues must come from the saved state
    model2, optim2, schedule2 = build()
    model2.load_state_dict(state["model"])
    optim2.load_state_dict(state["optimizer"])
    schedule2.load_state_dict(state["schedule"])
    assert run_epochs(model2, optim2, schedule2, 2, epochs) == (tail, tail_lrs)


@pytest.mark.parametrize("optimizer,scheduler", list(zip(OPTIMIZERS, ["onecycle", "plateau", "cosine", "multistep",
                                                                      "exponential"])))
def test_a_few_pairs_train_end_to_end(make_cfg, optimizer, scheduler):
    """Every optimizer through the real training loop, each with another scheduler (none and step: test_resume,
    test_finetune); all 35 pairs are stepped in test_every_optimizer_scheduler_pair_steps_and_resumes."""
    cfg = make_cfg(f"optimizer={optimizer}", f"scheduler={scheduler}", "scheduler.warmup_epochs=1",
                   "trainer.max_epochs=3", "trainer.limit_train_batches=4", "logger=none")
    metrics = train(cfg, overrides=[])
    assert math.isfinite(metrics["test/loss"])
    assert metrics["epochs_completed"] == 3


# The bundled 8x8 digits and the MLP: two epochs take well under a second and reach ~90% (an untrained model: ~10%).
SMALL_DIGITS = ["data=digits", "data.input_size=[8,8]", "model=mlp", "trainer.max_epochs=2", "logger=none"]


@pytest.mark.parametrize("loss", ["cross_entropy", "bce", "mse"])
def test_each_loss_learns(make_cfg, loss):
    metrics = train(make_cfg(*SMALL_DIGITS, f"trainer.loss={loss}"), overrides=[])
    assert metrics["test/acc"] > 0.5, loss


def test_bf16_autocast_channels_last_and_clipping_on_cpu(make_cfg):
    metrics = train(make_cfg("data=digits", "trainer.precision=bf16", "trainer.channels_last=true",
                             "trainer.grad_clip=1.0", "trainer.max_epochs=2", "logger=none"), overrides=[])
    assert metrics["test/acc"] > 0.5


@pytest.mark.slow
def test_torch_compile(make_cfg):
    metrics = train(make_cfg("trainer.compile=true", "trainer.max_epochs=1", "trainer.limit_train_batches=20",
                             "logger=none"), overrides=[])
    assert math.isfinite(metrics["test/loss"])


def test_dataloader_path_matches_the_tensor_path_in_quality(make_cfg):
    metrics = train(make_cfg(*SMALL_DIGITS, "data.loader=dataloader"), overrides=[])
    assert metrics["test/acc"] > 0.85


def test_label_smoothing_applies_to_mse_and_bce_as_to_cross_entropy():
    from cnnlab.engine.losses import Loss

    logits, target = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]]), torch.tensor([0, 2])
    smoothed = torch.tensor([[0.9, 0.0, 0.0], [0.0, 0.0, 0.9]]) + 0.1 / 3
    want = torch.nn.functional.mse_loss(logits.softmax(dim=1), smoothed)
    assert torch.allclose(Loss("mse", 0.1)(logits, target), want)
    assert not torch.allclose(Loss("mse", 0.1)(logits, target), Loss("mse", 0.0)(logits, target))
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, smoothed)
    assert torch.allclose(Loss("bce", 0.1)(logits, target), bce)
