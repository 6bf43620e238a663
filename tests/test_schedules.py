"""Learning-rate schedules: warm-up, hand-over to the torch scheduler, plateau on the monitored metric."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from cnnlab.engine.optim import build_schedule

# These unit tests step schedules without optimizer steps on purpose.
pytestmark = pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)`")


def optimizer(lr=1.0):
    return torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=lr)


def schedule_cfg(**kw):
    base = {"_target_": None, "interval": "epoch", "warmup_epochs": 0, "warmup_start_factor": 0.1}
    base.update(kw)
    return OmegaConf.create(base)


def run_epochs(schedule, epochs, steps, metrics=None):
    lrs = []
    for e in range(epochs):
        for _ in range(steps):
            lrs.append(schedule.lr())
            schedule.step_batch()
        schedule.step_epoch(None if metrics is None else metrics[e])
    return lrs


def test_linear_warmup_then_constant():
    opt = optimizer()
    s = build_schedule(schedule_cfg(warmup_epochs=2), opt, max_epochs=4, steps_per_epoch=5, monitor_mode="min")
    lrs = run_epochs(s, 4, 5)
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[:10] == sorted(lrs[:10]) and lrs[9] < 1.0
    assert lrs[10:] == [pytest.approx(1.0)] * 10


def test_step_schedule_counts_epochs_after_warmup():
    opt = optimizer()
    cfg = schedule_cfg(_target_="torch.optim.lr_scheduler.StepLR", step_size=1, gamma=0.5, warmup_epochs=1)
    s = build_schedule(cfg, opt, max_epochs=4, steps_per_epoch=3, monitor_mode="min")
    lrs = run_epochs(s, 4, 3)
    per_epoch = [lrs[i * 3] for i in range(4)]
    assert per_epoch[0] == pytest.approx(0.1)
    assert per_epoch[1:] == [pytest.approx(1.0), pytest.approx(0.5), pytest.approx(0.25)]


def test_cosine_fills_in_its_length_and_ends_at_eta_min():
    opt = optimizer()
    cfg = schedule_cfg(_target_="torch.optim.lr_scheduler.CosineAnnealingLR", T_max=None, eta_min=0.0, interval="step")
    s = build_schedule(cfg, opt, max_epochs=3, steps_per_epoch=4, monitor_mode="min")
    assert s.scheduler.T_max == 12
    run_epochs(s, 3, 4)
    assert s.lr() == pytest.approx(0.0, abs=1e-9)


def test_onecycle_peaks_at_the_optimizer_lr():
    opt = optimizer(lr=0.5)
    cfg = schedule_cfg(_target_="torch.optim.lr_scheduler.OneCycleLR", max_lr=None, total_steps=None, pct_start=0.25,
                       interval="step", cycle_momentum=None)
    s = build_schedule(cfg, opt, max_epochs=4, steps_per_epoch=10, monitor_mode="min")
    lrs = run_epochs(s, 4, 10)
    assert max(lrs) == pytest.approx(0.5, rel=1e-3)
    assert lrs[0] < 0.05 and lrs[-1] < 1e-3


def test_plateau_reduces_on_the_monitored_metric():
    opt = optimizer()
    cfg = schedule_cfg(_target_="torch.optim.lr_scheduler.ReduceLROnPlateau", mode=None, factor=0.1, patience=1,
                       threshold=0.0, min_lr=0.0)
    s = build_schedule(cfg, opt, max_epochs=5, steps_per_epoch=2, monitor_mode="max")
    assert s.scheduler.mode == "max"
    lrs = run_epochs(s, 5, 2, metrics=[0.5, 0.6, 0.6, 0.6, 0.6])
    per_epoch = [lrs[i * 2] for i in range(5)]
    # Improves at epoch 2; epochs 3 and 4 stall -> patience 1 exceeded after epoch 4.
    assert per_epoch == [pytest.approx(v) for v in (1.0, 1.0, 1.0, 1.0, 0.1)]


def test_schedule_state_round_trips():
    opt = optimizer()
    cfg = schedule_cfg(_target_="torch.optim.lr_scheduler.ExponentialLR", gamma=0.5, warmup_epochs=1)
    s = build_schedule(cfg, opt, max_epochs=5, steps_per_epoch=2, monitor_mode="min")
    run_epochs(s, 3, 2)
    state = s.state_dict()
    opt2 = optimizer()
    s2 = build_schedule(cfg, opt2, max_epochs=5, steps_per_epoch=2, monitor_mode="min")
    opt2.param_groups[0]["lr"] = opt.param_groups[0]["lr"]
    s2.load_state_dict(state)
    assert run_epochs(s, 2, 2) == run_epochs(s2, 2, 2)


@pytest.mark.parametrize("epochs,steps", [(2, 2), (1, 4), (1, 1), (1, 2), (3, 1), (1, 3)])
def test_onecycle_works_for_runs_of_a_few_steps(epochs, steps):
    """The README's smoke run (trainer.max_epochs=2 trainer.limit_train_batches=2) once died in OneCycleLR with
    ZeroDivisionError: every run of at least one step must get a usable schedule."""
    import math

    opt = optimizer(lr=0.5)
    cfg = schedule_cfg(_target_="torch.optim.lr_scheduler.OneCycleLR", max_lr=None, total_steps=None, pct_start=0.25,
                       interval="step", cycle_momentum=None)
    s = build_schedule(cfg, opt, max_epochs=epochs, steps_per_epoch=steps, monitor_mode="min")
    lrs = run_epochs(s, epochs, steps)
    assert len(lrs) == epochs * steps and all(math.isfinite(lr) and 0 < lr <= 0.5 + 1e-9 for lr in lrs)
    if epochs * steps >= 3:
        assert max(lrs) == pytest.approx(0.5, rel=1e-6)  # the cycle still reaches the optimizer's lr


def test_optimizer_default_spares_biases_and_norm_weights_from_weight_decay():
    """One default, the YAML files' false: an optimizer config without decay_norm_and_bias decays weights only."""
    from cnnlab.engine.optim import build_optimizer

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    cfg = OmegaConf.create({"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1, "weight_decay": 0.01})
    opt = build_optimizer(cfg, model)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(model[0].weight)}
