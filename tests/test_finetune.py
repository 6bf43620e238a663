"""Transfer learning offline: task A (digits 0-4) -> task B (digits 5-9) with a frozen or fine-tuned backbone."""

from __future__ import annotations

import pytest
import torch

from cnnlab.engine.checkpoint import load_checkpoint
from cnnlab.errors import ConfigError
from cnnlab.run.lifecycle import prepare, train

TASK_A = ["data.class_subset=[0,1,2,3,4]", "trainer.max_epochs=2", "logger=none"]
TASK_B = ["data.class_subset=[5,6,7,8,9]", "trainer.max_epochs=2", "logger=none"]


@pytest.fixture(scope="module")
def task_a(tmp_path_factory):
    from conftest import FAST, compose_cfg

    run_dir = tmp_path_factory.mktemp("task_a") / "run"
    metrics = train(compose_cfg(run_dir, *FAST, *TASK_A), overrides=[])
    return run_dir, metrics


def test_class_subset_relabels(make_cfg):
    run = prepare(make_cfg(*TASK_B), overrides=[])
    assert run.data.info.classes == ("5", "6", "7", "8", "9") and run.data.info.num_classes == 5
    assert set(run.data.train.labels.unique().tolist()) == {0, 1, 2, 3, 4}
    assert run.model.classifier[-1].out_features == 5


def test_frozen_backbone_stays_fixed_and_the_head_learns(task_a, make_cfg, tmp_path):
    a_dir, a_metrics = task_a
    assert a_metrics["test/acc"] > 0.8
    before = load_checkpoint(a_dir / "checkpoints" / "best.ckpt")["model"]
    metrics = train(make_cfg(*TASK_B, f"finetune.checkpoint={a_dir}", "finetune.freeze=backbone", run="b"),
                    overrides=[])
    after = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.ckpt")["model"]
    for key, value in before.items():
        if key.startswith("classifier.5."):
            assert key in after and not torch.equal(after[key], value)  # replaced head, trained
        else:
            assert torch.equal(after[key], value), key  # frozen backbone: bit-for-bit unchanged
    assert metrics["test/acc"] > 0.3  # well above 1/5 chance from a linear head on task-A features


def test_unfreeze_after_n_epochs_and_backbone_learning_rate(task_a, make_cfg, tmp_path):
    a_dir, _ = task_a
    overrides = [*TASK_B, f"finetune.checkpoint={a_dir}", "finetune.freeze=backbone",
                 "finetune.unfreeze_after_epochs=1", "finetune.backbone_lr_scale=0.1", "scheduler=none",
                 "optimizer.lr=0.002"]
    run = prepare(make_cfg(*overrides, run="u"), overrides=[])
    lrs = sorted({g["lr"] for g in run.trainer.task.optimizer.param_groups})
    assert lrs == [pytest.approx(0.0002), pytest.approx(0.002)]
    assert not run.model.features[0].weight.requires_grad and run.model.classifier[5].weight.requires_grad
    run.trainer.fit(run.data.train, run.data.val)
    assert run.model.features[0].weight.requires_grad  # unfrozen for epoch 2
    before = load_checkpoint(a_dir / "checkpoints" / "best.ckpt")["model"]["features.0.weight"]
    assert not torch.equal(run.model.features[0].weight.detach(), before)
    run.tb.close()


def test_frozen_batch_norm_stays_in_eval_mode(make_cfg):
    run = prepare(make_cfg("model=resnet18", "finetune.freeze=[bn1,layer1]", "logger=none"), overrides=[])
    trainer = run.trainer
    trainer.task.model.train()
    trainer.task.freezer.set_modes()
    assert not run.model.bn1.training and not run.model.layer1[0].bn1.training
    assert run.model.layer2[0].bn1.training
    assert run.model.conv1.weight.requires_grad and not run.model.bn1.weight.requires_grad
    run.tb.close()


def test_freeze_prefix_that_matches_nothing(make_cfg):
    with pytest.raises(ConfigError, match="finetune.freeze: 'backbone2' match\\(es\\) no module.*features, classifier"):
        prepare(make_cfg("finetune.freeze=[backbone2]"), overrides=[])


def test_checkpoint_of_another_architecture(task_a, make_cfg):
    a_dir, _ = task_a
    with pytest.raises(ConfigError, match="holds a 'lenet5' model, but the config builds model.name='resnet20'"):
        prepare(make_cfg(*TASK_B, "model=resnet20", f"finetune.checkpoint={a_dir}"), overrides=[])


def test_resume_and_finetune_checkpoint_together_are_refused(task_a, make_cfg, tmp_path):
    run_dir, _ = task_a
    overrides = [f"trainer.resume={run_dir}", f"finetune.checkpoint={run_dir}"]
    with pytest.raises(ConfigError, match="trainer.resume=.* and finetune.checkpoint=.* cannot be combined"):
        train(make_cfg(*overrides, run="both"), overrides=overrides)


def test_in_modules_matches_a_module_and_what_lies_inside_it():
    from cnnlab.engine.freezing import in_modules

    assert in_modules("layer1", ["layer1"]) and in_modules("layer1.0.conv1", ["fc", "layer1"])
    assert not in_modules("layer10", ["layer1"]) and not in_modules("layer", ["layer1"]) and not in_modules("fc", [])


def test_fine_tuning_and_model_weights_keep_the_same_tensors():
    """One rule for both: by name and shape outside the fresh modules; the rest outside them is a misfit."""
    import torch

    from cnnlab.engine.freezing import fitting_weights

    own = {"conv.weight": torch.zeros(4, 3, 3, 3), "fc.weight": torch.zeros(10, 4), "bn.running_mean": torch.zeros(4)}
    state = {"conv.weight": torch.ones(4, 3, 3, 3), "fc.weight": torch.ones(7, 4), "bn.running_mean": torch.ones(5),
             "extra.weight": torch.ones(1)}
    fits, misfits = fitting_weights(state, own, ("fc",))
    assert list(fits) == ["conv.weight"] and torch.equal(fits["conv.weight"], state["conv.weight"])
    assert misfits == ["bn.running_mean", "extra.weight"]  # fc is fresh: its other width is no misfit
