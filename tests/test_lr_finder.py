"""The learning-rate range test of cnnlab-doctor: it leaves no trace, and its suggestion trains LeNet well."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from cnnlab.config.compose import compose_config
from cnnlab.diagnose.lr_finder import LRRange, lr_range_test, plot_lr_range, suggest, suggestion_override
from cnnlab.run.lifecycle import prepare, train

REPO = Path(__file__).resolve().parents[1]


def _small_net() -> nn.Module:
    torch.manual_seed(0)
    # BatchNorm: buffers to restore; Dropout: draws from the global RNG, which must be restored too
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Dropout(0.2),
                         nn.Linear(4 * 6 * 6, 3))


def _random_batches(n: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(n)]


def _adam_after_some_steps(model: nn.Module) -> torch.optim.Optimizer:
    """Adam with a backbone group at a tenth of the head's rate, moments filled by a few real steps."""
    head, backbone = list(model[-1].parameters()), [p for m in list(model)[:-1] for p in m.parameters()]
    optimizer = torch.optim.Adam([{"params": head, "lr": 1e-3}, {"params": backbone, "lr": 1e-4}])
    for x, y in _random_batches(3):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    return optimizer


def _state(model, optimizer) -> dict:
    return {"model": {k: v.clone() for k, v in model.state_dict().items()},
            "moments": [{k: v.clone() for k, v in s.items()} for s in optimizer.state.values()],
            "lrs": [g["lr"] for g in optimizer.param_groups], "training": model.training,
            "rng": torch.get_rng_state()}


def _assert_same_state(before: dict, after: dict) -> None:
    assert before["model"].keys() == after["model"].keys()
    for key, value in before["model"].items():  # weights and BatchNorm's running statistics
        assert torch.equal(value, after["model"][key]), key
    assert len(before["moments"]) == len(after["moments"])
    for old, new in zip(before["moments"], after["moments"]):  # Adam's step, exp_avg, exp_avg_sq
        assert all(torch.equal(old[k], new[k]) for k in old)
    assert after["lrs"] == before["lrs"]
    assert after["training"] == before["training"]
    assert torch.equal(after["rng"], before["rng"])


def test_range_test_restores_weights_optimizer_state_lrs_and_rng():
    model = _small_net()
    optimizer = _adam_after_some_steps(model)
    model.eval()  # restored too: the test itself trains in train mode
    before = _state(model, optimizer)
    seen_lrs = []

    def loss_fn(logits, y):
        seen_lrs.append([g["lr"] for g in optimizer.param_groups])
        return F.cross_entropy(logits, y)

    result = lr_range_test(model, optimizer, loss_fn, _random_batches(), device="cpu", steps=30, diverge=1e9)
    assert isinstance(result, LRRange) and len(result.lrs) == 30  # cycled through 4 batches
    assert result.lrs[0] == pytest.approx(1e-7) and result.lrs[-1] == pytest.approx(10.0)
    assert all(backbone == pytest.approx(head / 10) for head, backbone in seen_lrs)  # the groups' ratio kept
    _assert_same_state(before, _state(model, optimizer))


def test_range_test_restores_the_state_when_a_step_fails():
    model = _small_net()
    optimizer = _adam_after_some_steps(model)
    before = _state(model, optimizer)
    calls = []

    def failing_loss(logits, y):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("out of memory")
        return F.cross_entropy(logits, y)

    with pytest.raises(RuntimeError, match="out of memory"):
        lr_range_test(model, optimizer, failing_loss, _random_batches(), device="cpu", steps=30)
    _assert_same_state(before, _state(model, optimizer))


def test_no_suggestion_when_the_range_is_too_narrow_for_the_loss_to_fall(tmp_path):
    # rates far too small to change anything: the loss stays where it started, and the advice is a wider range
    result = lr_range_test(_small_net(), torch.optim.SGD(_small_net().parameters(), lr=0.1), F.cross_entropy,
                           _random_batches(), device="cpu", start_lr=1e-9, end_lr=1e-8, steps=40)
    assert result.suggestion is None and suggestion_override(result) is None
    assert result.cause == "narrow_high" and "never started falling" in result.reason
    assert "end_lr" in result.advice
    assert plot_lr_range(result, tmp_path / "flat.png", "flat").stat().st_size > 0  # still drawn, with the reason


# ---- the rule on constructed curves: 100 steps from 1e-7 to 10, as the doctor runs it -----------------------
def _curve(loss_of_log_lr, *, noise=0.0, diverge=4.0, seed=0, steps=100):
    """(lrs, losses, diverged_at) of a range test whose loss follows loss_of_log_lr(log10 lr) plus noise, stopped as
    lr_range_test stops: once the exponential average exceeds `diverge` x its minimum."""
    rng = np.random.default_rng(seed)
    lrs, losses, average, best = [], [], 0.0, math.inf
    for step, lr in enumerate(np.logspace(-7, 1, steps)):
        value = float(loss_of_log_lr(math.log10(lr)) + noise * rng.standard_normal())
        average = 0.98 * average + 0.02 * value
        smoothed = average / (1 - 0.98 ** (step + 1))
        best = min(best, smoothed)
        if smoothed > diverge * best:
            return lrs, losses, float(lr)
        lrs.append(float(lr))
        losses.append(value)
    return lrs, losses, None


def _fall(x, at, width=0.3, depth=1.8):
    """A loss of 2.3 falling by `depth` around lr=10**at."""
    return 2.3 - depth / (1 + math.exp(-(x - at) / width))


def _valley(x):  # falls around 1e-3, turns at about 3e-2, blows up beyond
    return _fall(x, -3) + 30 * max(0.0, x + 1.5) ** 2


def test_rule_on_a_clean_valley_suggests_its_steepest_fall_with_a_band_around_it():
    lrs, losses, diverged = _curve(_valley)
    found = suggest(lrs, losses, diverged_at=diverged, end_lr=10.0)
    assert diverged is not None and found.cause is None
    assert 10 ** -2 <= found.min_loss_lr <= 10 ** -1.3
    assert 10 ** -3.2 <= found.suggestion <= 10 ** -2.8  # the fall is steepest at 1e-3
    low, high = found.band
    assert low == pytest.approx(found.suggestion / 10) and high == pytest.approx(found.suggestion * 10)
    assert low <= 1e-3  # the rates where the loss falls are in the band


def test_a_run_without_warm_up_gets_a_tenth_of_the_minimum_and_a_band_that_stops_at_the_minimum():
    """A constant-rate run cannot use the rates a one-cycle peak reaches: the band ends where the loss turns."""
    lrs, losses, diverged = _curve(lambda x: _fall(x, -1.5) + 30 * max(0.0, x + 0.5) ** 2)  # falls at 0.03
    warm = suggest(lrs, losses, diverged_at=diverged, end_lr=10.0)
    constant = suggest(lrs, losses, diverged_at=diverged, end_lr=10.0, warmup=False)
    assert warm.min_loss_lr == constant.min_loss_lr and warm.band[1] > constant.min_loss_lr  # one-cycle: above it
    assert constant.band == pytest.approx((warm.suggestion / 30, constant.min_loss_lr))
    assert constant.suggestion == pytest.approx(constant.min_loss_lr / 10, rel=0.1)
    assert constant.band[0] <= constant.suggestion <= constant.band[1]
    assert constant.rule.startswith("a tenth of the minimum") and warm.rule == "steepest fall"


def test_the_band_follows_the_schedule_the_run_will_use(tmp_path):
    from cnnlab.diagnose.subject import warms_up

    def scheduler(*overrides):
        return compose_config(list(overrides), tmp_path).scheduler

    assert warms_up(scheduler()) and warms_up(scheduler("scheduler=onecycle"))  # the default warms up
    assert not warms_up(scheduler("scheduler=none")) and not warms_up(scheduler("scheduler=cosine"))
    assert warms_up(scheduler("scheduler=cosine", "scheduler.warmup_epochs=2"))


def test_rule_on_a_noisy_valley_suggests_what_it_suggests_without_the_noise():
    clean = suggest(*_curve(_valley)[:2]).suggestion
    for seed in range(3):
        lrs, losses, diverged = _curve(_valley, noise=0.3, seed=seed)
        found = suggest(lrs, losses, diverged_at=diverged, end_lr=10.0)
        assert found.suggestion is not None, found.reason
        assert abs(math.log10(found.suggestion / clean)) <= 0.5


def test_rule_on_a_loss_still_falling_at_the_end_asks_for_a_higher_end_lr():
    lrs, losses, diverged = _curve(lambda x: _fall(x, 0.5))
    found = suggest(lrs, losses, diverged_at=diverged, end_lr=10.0)
    assert diverged is None and found.suggestion is None and found.cause == "narrow_high"
    assert "still falling" in found.reason and "doctor.lr_range.end_lr" in found.advice


def test_rule_on_a_loss_falling_from_the_first_step_asks_for_a_lower_start_lr():
    lrs, losses, diverged = _curve(lambda x: _fall(x, -7.2, width=0.6) + 30 * max(0.0, x + 1.5) ** 2)
    found = suggest(lrs, losses, diverged_at=diverged, end_lr=10.0)
    assert found.suggestion is None and found.cause == "narrow_low"
    assert "doctor.lr_range.start_lr" in found.advice


def test_rule_on_a_loss_that_never_falls_and_never_blows_up_says_so_and_points_at_the_data():
    lrs, losses, diverged = _curve(lambda x: 2.3, noise=0.05)
    found = suggest(lrs, losses, diverged_at=diverged, end_lr=10.0)
    assert diverged is None and found.suggestion is None and found.cause == "flat"
    assert "never decreased" in found.reason and "check the data" in found.advice


def test_rule_on_a_flat_loss_that_blows_up_is_inconclusive_with_more_steps_as_the_advice():
    # what SGD with momentum 0.9 shows in 100 steps: the fall between flat and divergence is too short to see
    lrs, losses, diverged = _curve(lambda x: 2.3 + 40 * max(0.0, x + 1.0) ** 2, noise=0.02)
    found = suggest(lrs, losses, diverged_at=diverged, end_lr=10.0, momentum=0.9)
    assert diverged is not None and found.suggestion is None and found.cause == "steps"
    assert "inconclusive" in found.reason and "momentum 0.9" in found.reason
    assert "never decreased" not in found.reason and "data" not in found.advice
    assert "doctor.lr_range.steps=300" in found.advice


def test_rule_on_a_loss_exploding_at_the_start_asks_for_a_lower_start_lr():
    lrs, losses, diverged = _curve(lambda x: 2.3 * math.exp(min(50 * (x + 7), 50)))  # x55 per step
    found = suggest(lrs, losses, diverged_at=diverged, end_lr=10.0)
    assert found.suggestion is None and found.cause == "exploded" and "start_lr" in found.advice
    assert suggest([], [], diverged_at=1e-7).cause == "exploded"  # not finite from the first step


# ---- on the default LeNet-5 run ---------------------------------------------------------------------------
QUIET = ["trainer.progress=none", "trainer.summary=none", "logger=none", "trainer.device=cpu"]
DEFAULT_LR = 3e-3  # configs/optimizer/adamw.yaml; test_training's documented-accuracy test shows it trains well


@pytest.fixture(scope="module")
def lenet_run(tmp_path_factory):
    """The default cnnlab-train run (LeNet-5 on mnist_sample, AdamW + one-cycle), built as training builds it.
    Shared: every range test restores the model and optimizer, so each test starts from the same state."""
    run = prepare(compose_config(QUIET, tmp_path_factory.mktemp("lenet") / "run"), overrides=[])
    run.data.train.set_epoch(1)
    return run


def _default_run_range(run) -> LRRange:
    task = run.trainer.task  # the optimizer as training uses it, one-cycle scheduler attached
    result = lr_range_test(run.model, task.optimizer, task.loss, run.data.train, device=run.trainer.device)
    assert result.suggestion is not None, result.reason
    return result


def test_suggestion_on_the_default_lenet_run_is_within_10x_of_a_good_lr(lenet_run):
    assert DEFAULT_LR / 10 <= _default_run_range(lenet_run).suggestion <= DEFAULT_LR * 10


@pytest.mark.slow
def test_suggestion_on_the_default_lenet_run_trains_it_well(lenet_run, tmp_path):
    result = _default_run_range(lenet_run)
    assert DEFAULT_LR / 10 <= result.suggestion <= DEFAULT_LR * 10
    # ... and the suggestion itself trains well: the printed override, 2 epochs (measured 96% at 0.024,
    # 94% at the default 3e-3, 74% at 3e-4, 10% at 0.24)
    cfg = compose_config([*QUIET, "trainer.max_epochs=2", "trainer.checkpoint.save_last=false",
                          suggestion_override(result)], tmp_path / "at_suggestion")
    assert train(cfg, overrides=[])["val/acc_best"] > 0.90


def _bench():
    """scripts/bench_lr_finder.py, the comparison recorded in docs/benchmarks.md, so the test checks that code."""
    spec = importlib.util.spec_from_file_location("bench_lr_finder", REPO / "scripts" / "bench_lr_finder.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _assert_agrees_with_torch_lr_finder(found: dict) -> None:
    assert found["same_lrs"] and found["ours_steps"] == found["theirs_steps"]
    # The same training steps: their smoothing replayed on our raw losses gives their curve.
    assert found["same_steps_gap"] < 1e-6
    # The curves differ only in where the average starts (theirs at the first loss, ours bias-corrected: 2-13%
    # apart, measured); their rule and smoothing on our raw losses pick their rate (cnnlab's own rule is
    # another, docs/lr_finder.md). 1.5 leaves room for a neighbouring step (a factor 1.1-1.2 in lr).
    assert found["smoothing_gap"] < 0.2
    assert 1 / 1.5 <= found["ratio"] <= 1.5


def test_suggestion_agrees_with_torch_lr_finder_short(lenet_run):
    _assert_agrees_with_torch_lr_finder(_bench().compare(lenet_run, steps=100))


@pytest.mark.slow
def test_suggestion_agrees_with_torch_lr_finder_at_the_default_200_steps(lenet_run):
    _assert_agrees_with_torch_lr_finder(_bench().compare(lenet_run, steps=200))
