"""The parts training and cnnlab-eval share: the saved config coming back, autocast, the top-k list, the loss
with its class weights, and the metrics read off a split's confusion matrix."""

from __future__ import annotations

import logging

import pytest
import torch

from cnnlab.engine.devices import Precision
from cnnlab.engine.checkpoint import load_checkpoint
from cnnlab.engine.task import TrainerOptions, reported_topk
from cnnlab.errors import ConfigError
from cnnlab.engine.losses import resolve_class_weights, run_loss
from cnnlab.engine.metrics import classification_metrics, confusion_metrics, per_class_accuracy
from cnnlab.run.restore import saved_run_config
from cnnlab.config.typed import typed_config
from conftest import compose_cfg


def test_reported_topk_always_has_top1_once_and_ascending_for_training_and_eval(tmp_path):
    assert reported_topk([5, 3, 5]) == (1, 3, 5)
    assert reported_topk([]) == (1,)
    trainer = typed_config(compose_cfg(tmp_path, "trainer.topk=[5,1]")).trainer
    assert TrainerOptions.from_config(trainer).topk == reported_topk(trainer.topk) == (1, 5)


def test_precision_autocast_full_precision_is_one_reusable_no_op_and_bf16_autocasts():
    full = Precision(None, False)
    assert full.autocast("cpu") is full.autocast("cpu")
    with full.autocast("cpu"):
        assert not torch.is_autocast_enabled("cpu")
    with Precision(torch.bfloat16, False).autocast("cpu"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def test_run_loss_weights_as_training_does_and_says_so_only_when_asked(caplog, tmp_path):
    trainer = typed_config(compose_cfg(tmp_path, "trainer.label_smoothing=0.1", "trainer.class_weights=auto")).trainer
    counts = [30, 10, 20]
    with caplog.at_level(logging.INFO, logger="cnnlab"):
        quiet = run_loss(trainer, "balanced", counts, announce=False)
    assert not caplog.records
    with caplog.at_level(logging.INFO, logger="cnnlab"):
        loss = run_loss(trainer, "balanced", counts)
    assert "trainer.class_weights=auto" in caplog.records[0].getMessage()
    assert "favoured twice" in caplog.records[1].getMessage()
    for each in (quiet, loss):
        assert each.name == "cross_entropy" and each.smoothing == pytest.approx(0.1)
        assert each.weight.tolist() == pytest.approx(resolve_class_weights("auto", counts))
    assert run_loss(trainer.model_copy(update={"class_weights": None}), "balanced", counts).weight is None


def test_confusion_metrics_are_the_averages_then_per_class_accuracy_and_scores():
    confusion = torch.tensor([[3, 1, 0], [0, 2, 0], [1, 0, 0]])
    classes = ["a", "b", "c"]
    averages, per_class = confusion_metrics(confusion, classes, "test")
    expected_averages, scores = classification_metrics(confusion, classes, "test")
    assert averages == expected_averages
    assert list(per_class) == ["test/per_class_acc", *scores]
    assert per_class["test/per_class_acc"] == dict(zip(classes, per_class_accuracy(confusion)))


def test_saved_run_config_takes_only_the_command_lines_keys_and_fixed_values_before_the_trust_checks(
        trained_run, make_cfg):
    run_dir, _ = trained_run
    path = run_dir / "checkpoints" / "last.ckpt"
    ckpt = load_checkpoint(path)
    ckpt["config"]["augment"]["transforms"] = [{"_target_": "planted.Anything"}]
    overrides = ["data.eval_batch_size=7", "trainer.max_epochs=9", f"ckpt={path}"]
    cfg = make_cfg(*overrides, "trainer.label_smoothing=0.3", config_name="eval", run="eval")
    saved, merged, keys = saved_run_config(cfg, ckpt, path, overrides, skip=("ckpt",),
                                           fixed={"augment.transforms": []})
    assert keys == ["data.eval_batch_size", "trainer.max_epochs", "paths"]
    assert merged.data.eval_batch_size == 7 and merged.trainer.max_epochs == 9
    assert merged.trainer.label_smoothing == saved.trainer.label_smoothing  # not on the command line
    assert list(merged.augment.transforms) == []
    with pytest.raises(ConfigError, match="planted.Anything"):  # without the fixed value, the target is checked
        saved_run_config(cfg, ckpt, path, overrides, skip=("ckpt",))


def test_seed_statistics_are_one_rule_for_sweep_tables_and_lab_pages():
    """Sample std over seeds, None for a single seed, nothing for no value: the same numbers in both tables."""
    from cnnlab.experiments.tables import seed_mean_std
    from cnnlab.lab.page import summarise

    assert seed_mean_std([]) == (None, None)
    assert seed_mean_std([0.5]) == (0.5, None)
    mean, std = seed_mean_std([0.9, 0.8, 0.7])
    assert mean == pytest.approx(0.8) and std == pytest.approx(0.1)
    assert summarise([0.9, 0.8, 0.7, float("nan"), None]) == (mean, std, 3)  # the page keeps finite values only
    assert summarise([]) == (None, None, 0)


def test_a_run_checks_its_model_section_once(tmp_path, monkeypatch):
    """Validation checks the model section; building the model trusts it (a model=hub entry would otherwise list its
    repository twice, model=torchvision resolve its weights twice)."""
    import cnnlab.models as models
    import cnnlab.run.validate as validation
    from cnnlab.run.lifecycle import prepare

    checked, real = [], models.model_config_problems

    def counting(section):
        checked.append(section.name)
        return real(section)

    monkeypatch.setattr(models, "model_config_problems", counting)
    monkeypatch.setattr(validation, "model_config_problems", counting)
    run = prepare(compose_cfg(tmp_path, "trainer.max_epochs=1", "trainer.progress=none", "logger=none"), overrides=[])
    run.trainer.teardown()
    assert checked == ["lenet5"]
