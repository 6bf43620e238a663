"""Early stopping on a monitored metric: patience, min_delta, mode, and the best weights used for testing."""

from __future__ import annotations


from cnnlab.engine.early_stopping import MonitoredMetric, resolve_monitor_mode
from cnnlab.engine.trainer import Trainer
from cnnlab.run.lifecycle import train


def stop_epoch(values, mode="min", patience=3, min_delta=0.0):
    m = MonitoredMetric("val/loss", mode, patience, min_delta)
    for epoch, v in enumerate(values, start=1):
        m.update(v, epoch)
        if m.should_stop:
            return epoch, m.best_epoch
    return None, m.best_epoch


def test_stops_after_patience_epochs_without_improvement():
    # Best at epoch 2; epochs 3, 4, 5 do not improve -> stop at 5.
    assert stop_epoch([1.0, 0.8, 0.85, 0.81, 0.9, 0.1], patience=3) == (5, 2)


def test_an_improvement_resets_patience():
    assert stop_epoch([1.0, 0.9, 0.95, 0.8, 0.85, 0.86, 0.87], patience=3) == (7, 4)


def test_min_delta_ignores_tiny_improvements():
    # 0.995 and 0.991 are within min_delta=0.01 of 1.0: not improvements.
    assert stop_epoch([1.0, 0.995, 0.991], patience=2, min_delta=0.01) == (3, 1)
    assert stop_epoch([1.0, 0.98, 0.96], patience=2, min_delta=0.01) == (None, 3)


def test_max_mode_and_nan():
    assert stop_epoch([0.5, 0.6, float("nan"), 0.59], mode="max", patience=2) == (4, 2)


def test_mode_follows_the_metric_name():
    assert resolve_monitor_mode("val/loss", "auto") == "min"
    assert resolve_monitor_mode("val/acc", "auto") == "max"
    assert resolve_monitor_mode("val/acc_top5", "auto") == "max"
    assert resolve_monitor_mode("val/acc", "min") == "min"


def test_trainer_stops_at_the_right_epoch_and_tests_the_best_weights(make_cfg, monkeypatch, tmp_path):
    """Feed the real training loop a crafted val/acc sequence: best at epoch 2, patience 2 -> stops after epoch 4."""
    crafted = iter([0.50, 0.70, 0.65, 0.69, 0.99, 0.99])
    real_evaluate = Trainer.evaluate

    def crafted_evaluate(self, loader, prefix, with_confusion=False, **keys):
        result = real_evaluate(self, loader, prefix, with_confusion, **keys)
        if prefix == "val":
            result["val/acc"] = next(crafted)
        return result

    monkeypatch.setattr(Trainer, "evaluate", crafted_evaluate)
    metrics = train(make_cfg("trainer.max_epochs=6", "trainer.monitor=val/acc", "trainer.early_stopping.enabled=true",
                             "trainer.early_stopping.patience=2",
                             "trainer.limit_train_batches=5", "logger=none", run="es"), overrides=[])
    assert metrics["epochs_completed"] == 4
    assert metrics["stopped_early"] is True
    assert metrics["best_epoch"] == 2
    assert metrics["val/acc_best"] == 0.70
    import torch

    best = torch.load(tmp_path / "es" / "checkpoints" / "best.ckpt", weights_only=True)
    last = torch.load(tmp_path / "es" / "checkpoints" / "last.ckpt", weights_only=True)
    assert best["epoch"] == 2 and last["epoch"] == 4


def test_early_stopping_can_be_disabled(make_cfg, monkeypatch):
    real_evaluate = Trainer.evaluate

    def flat(self, loader, prefix, with_confusion=False, **keys):
        result = real_evaluate(self, loader, prefix, with_confusion, **keys)
        if prefix == "val":
            result["val/loss"] = 1.0
        return result

    monkeypatch.setattr(Trainer, "evaluate", flat)
    metrics = train(make_cfg("trainer.max_epochs=4", "trainer.early_stopping.enabled=false",
                             "trainer.early_stopping.patience=1", "trainer.limit_train_batches=3", "logger=none"),
                    overrides=[])
    assert metrics["epochs_completed"] == 4 and metrics["stopped_early"] is False


def test_a_monitor_that_validation_does_not_log_is_refused_before_data_or_model_are_built(make_cfg, monkeypatch):
    import pytest

    import cnnlab.run.lifecycle as lifecycle
    from cnnlab.errors import ConfigError

    def never(*args, **kwargs):
        raise AssertionError("built before trainer.monitor was checked")

    monkeypatch.setattr(lifecycle, "build_data", never)
    monkeypatch.setattr(lifecycle, "build_model", never)
    with pytest.raises(ConfigError, match=r"trainer.monitor='val/accuracy' is not a logged metric; choose one of "
                                          r"val/acc, val/acc_top5, val/loss$"):
        train(make_cfg("trainer.monitor=val/accuracy"))
    with pytest.raises(ConfigError, match=r"trainer.monitor='val/acc_top3' is not a logged metric; choose one of "
                                          r"val/acc, val/loss \(val/acc_top3 is logged when trainer.topk includes 3\)"):
        train(make_cfg("trainer.monitor=val/acc_top3", "trainer.topk=[1]"))


def test_the_monitor_names_are_the_metrics_validation_logs(make_cfg):
    from omegaconf import OmegaConf

    from cnnlab.engine.task import validation_metrics
    from cnnlab.run.validate import fit_topk, monitor_problem, validate

    assert validation_metrics([5, 1, 5]) == ["val/acc", "val/acc_top5", "val/loss"]
    assert validation_metrics([3]) == ["val/acc", "val/acc_top3", "val/loss"]
    for monitor in ("val/loss", "val/acc", "val/acc_top5"):  # the average (EMA, SWA) is validated under these too
        validate(make_cfg(f"trainer.monitor={monitor}", "trainer.ema.enabled=true"))
    assert monitor_problem(make_cfg("trainer.monitor=val/acc_best")) == (
        "trainer.monitor='val/acc_best' is not a logged metric; choose one of val/acc, val/acc_top5, val/loss")
    # top-5 of a config file dropped for 3 classes (found once an image folder is read): no longer monitorable
    cfg = make_cfg("trainer.monitor=val/acc_top5")
    fit_topk(cfg, 3, given=False)
    assert OmegaConf.to_container(cfg.trainer.topk) == [1]
    assert monitor_problem(cfg) == ("trainer.monitor='val/acc_top5' is not a logged metric; choose one of val/acc, "
                                    "val/loss (val/acc_top5 is logged when trainer.topk includes 5)")
