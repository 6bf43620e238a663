"""trainer.bn_recalibrate: batch-norm statistics recomputed for the current weights before each validation. The
pass itself (cnnlab.engine.batchnorm: the plain mean of batch statistics of the network as evaluation runs it,
modes, momentum and counters restored, unreached and frozen layers kept), and in training runs: a real gain on
a batch-norm network trained fast, the same training with it on or off, exact resume, EMA/SWA, both loaders."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn as nn

from cnnlab.engine.batchnorm import batch_norms, recompute_batchnorm, trained_norms
from cnnlab.engine.checkpoint import load_checkpoint
from cnnlab.errors import ConfigError
from cnnlab.run.lifecycle import prepare, train
from runs import KillAfter, fit, same_tensors

# The bundled digits at 8x8, an MLP with batch norm, SGD at a high constant rate: the weights move fast, and the
# running statistics (momentum 0.1) lag behind them.
DIGITS = ["data=digits", "data.input_size=[8,8]", "augment=none", "logger=none", "trainer.summary=none"]
BN_MLP = [*DIGITS, "model=mlp", "model.hidden=[64,64]", "model.batch_norm=true", "model.dropout=0.1"]
FAST_SGD = ["optimizer=sgd", "optimizer.lr=0.5", "optimizer.momentum=0.9", "scheduler=none",
            "trainer.limit_train_batches=6"]
RECAL = ["trainer.bn_recalibrate=4"]


def parameters(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def train_columns(history: list[dict]) -> list[tuple]:
    return [(h["train/loss"], h["train/acc"], h["lr"]) for h in history]


# ---- the pass -------------------------------------------------------------------------------------------------
class Branchy(nn.Module):
    """conv, BN, dropout, conv, BN; and an auxiliary branch with its own BN that runs in train mode only (as
    GoogLeNet's auxiliary classifiers do)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 3, 1), nn.BatchNorm2d(3), nn.Dropout(0.5), nn.Conv2d(3, 2, 1),
                                  nn.BatchNorm2d(2))
        self.aux = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))

    def forward(self, x):
        out = self.body(x)
        return (out, self.aux(x)) if self.training else out


def batches(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(8, 1, 3, 3, generator=g) * (i + 1) + i for i in range(n)]


def test_the_pass_averages_batch_statistics_of_the_network_as_evaluation_runs_it():
    torch.manual_seed(0)
    model = Branchy()
    model(torch.randn(8, 1, 3, 3) + 5)  # train mode: running statistics that are not those of the batches below
    aux_norm, last_norm = model.aux[1], model.body[4]
    aux_before = (aux_norm.running_mean.clone(), aux_norm.running_var.clone())
    counted = last_norm.num_batches_tracked.clone()
    model.body[1].eval()  # a frozen layer (fine-tuning keeps it in eval mode): training does not update it
    frozen_before = model.body[1].running_mean.clone()
    names = trained_norms(model)
    assert names == {"body.4", "aux.1"}

    # expected: the inputs of the last batch norm in eval mode (dropout off), per-batch mean and unbiased variance
    seen = []
    handle = last_norm.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    model.eval()
    with torch.no_grad():
        for x in batches():
            model(x)
    handle.remove()
    mean = torch.stack([b.mean(dim=(0, 2, 3)) for b in seen]).mean(dim=0)
    var = torch.stack([b.var(dim=(0, 2, 3), unbiased=True) for b in seen]).mean(dim=0)
    model.train()
    model.body[1].eval()

    assert recompute_batchnorm(model, iter(batches()), names=names) == (3, 24, 2)
    torch.testing.assert_close(last_norm.running_mean, mean)
    torch.testing.assert_close(last_norm.running_var, var)
    # modes as they were, momentum and training's batch counter too
    assert model.training and model.body[2].training and model.aux[1].training and not model.body[1].training
    assert last_norm.momentum == 0.1 and torch.equal(last_norm.num_batches_tracked, counted)
    # the frozen layer and the branch evaluation never runs keep their statistics
    assert torch.equal(model.body[1].running_mean, frozen_before)
    assert torch.equal(aux_norm.running_mean, aux_before[0]) and torch.equal(aux_norm.running_var, aux_before[1])
    assert not any(p.grad is not None for p in model.parameters())


def test_the_pass_restores_modes_in_eval_too_and_skips_a_model_without_batch_norm():
    model = Branchy().eval()
    recompute_batchnorm(model, iter(batches()))
    assert not any(m.training for m in model.modules())
    consumed = []
    plain = nn.Sequential(nn.Conv2d(1, 2, 1), nn.Dropout())
    assert recompute_batchnorm(plain, (consumed.append(x) or x for x in batches())) == (0, 0, 0)
    assert consumed == [] and batch_norms(plain) == {}


# ---- in training runs -----------------------------------------------------------------------------------------
@pytest.mark.integration
def test_recalibration_validates_much_better_and_trains_exactly_the_same(make_cfg, caplog):
    """Two epochs of 6 SGD steps at lr 0.5: the running statistics lag the weights. Measured: val/loss 0.71 ->
    0.44 after epoch 1 and 0.55 -> 0.23 after epoch 2 (val/acc 0.87 -> 0.92), test/loss 0.73 -> 0.33; the
    training itself is untouched."""
    common = [*BN_MLP, *FAST_SGD, "trainer.test_with=last"]
    off, _ = fit(make_cfg(*common, run="off"))
    with caplog.at_level(logging.INFO, logger="cnnlab"):
        on, _ = fit(make_cfg(*common, *RECAL, run="on"))
    said = [r.getMessage() for r in caplog.records if "bn_recalibrate" in r.getMessage()]
    assert len(said) == 1 and "2 batch-norm layers" in said[0] and "4 training batches (256 images)" in said[0]

    assert train_columns(on.trainer.history) == train_columns(off.trainer.history)
    assert same_tensors(parameters(on.model), parameters(off.model))
    loss_off, loss_on = off.trainer.history[-1]["val/loss"], on.trainer.history[-1]["val/loss"]
    assert loss_on < 0.6 * loss_off, (loss_on, loss_off)
    assert on.trainer.history[0]["val/loss"] < off.trainer.history[0]["val/loss"]
    assert on.model.training  # validation and the pass leave the model as training left it

    # the test measures the statistics validation measured (saved with the weights): no pass of its own
    tested_on = on.trainer.test(on.data.test, on.data.info.classes)
    tested_off = off.trainer.test(off.data.test, off.data.info.classes)
    assert tested_on["test/loss"] < 0.6 * tested_off["test/loss"]
    assert tested_on["test/loss"] == pytest.approx(on.trainer.evaluate(on.data.test, "test")["test/loss"])


@pytest.mark.integration
@pytest.mark.parametrize("loader", ["tensor", "dataloader"])
def test_a_recalibrated_run_interrupted_then_resumed_equals_the_uninterrupted_run(make_cfg, tmp_path, loader):
    common = [*BN_MLP, *FAST_SGD, *RECAL, "trainer.max_epochs=3", f"data.loader={loader}", "data.num_workers=0"]
    full = train(make_cfg(*common, run="full"), overrides=[])
    with pytest.raises(KeyboardInterrupt):
        train(make_cfg(*common, run="killed"), overrides=[], callbacks=(KillAfter(1),))
    overrides = [f"trainer.resume={tmp_path / 'killed'}"]
    resumed = train(make_cfg(*overrides, run="resumed"), overrides=overrides)
    for key in ("test/loss", "test/acc", "val/acc_best", "best_epoch"):
        assert resumed[key] == full[key], key
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.ckpt")
    b = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.ckpt")
    assert [h["val/loss"] for h in a["history"]] == [h["val/loss"] for h in b["history"]]
    assert same_tensors(a["model"], b["model"])


@pytest.mark.integration
def test_a_conv_net_in_channels_last_and_bf16_recalibrates(make_cfg):
    common = [*DIGITS, "model=resnet20", *FAST_SGD, "optimizer.lr=0.2", "trainer.limit_train_batches=3",
              "trainer.max_epochs=1", "trainer.channels_last=true", "trainer.precision=bf16"]
    off, _ = fit(make_cfg(*common, run="off"))
    on, _ = fit(make_cfg(*common, *RECAL, run="on"))
    assert train_columns(on.trainer.history) == train_columns(off.trainer.history)
    assert on.trainer.history[0]["val/loss"] != off.trainer.history[0]["val/loss"]
    norm = next(iter(batch_norms(on.model).values()))
    assert norm.momentum == 0.1 and norm.training


@pytest.mark.integration
def test_with_ema_the_averaged_weights_are_recalibrated_and_an_active_swa_keeps_its_own(make_cfg):
    common = [*BN_MLP, *FAST_SGD]
    ema = ["trainer.ema.enabled=true", "trainer.ema.decay=0.9"]
    off, _ = fit(make_cfg(*common, *ema, run="ema_off"))
    on, _ = fit(make_cfg(*common, *ema, *RECAL, run="ema_on"))
    assert train_columns(on.trainer.history) == train_columns(off.trainer.history)
    assert same_tensors(on.model.state_dict(), off.model.state_dict())  # the raw model untouched
    averaged_on, averaged_off = on.trainer.task.average.module, off.trainer.task.average.module
    assert same_tensors(parameters(averaged_on), parameters(averaged_off))
    norm_on, norm_off = (next(iter(batch_norms(m).values())) for m in (averaged_on, averaged_off))
    assert not torch.equal(norm_on.running_mean, norm_off.running_mean)
    assert on.trainer.history[-1]["val/loss"] != off.trainer.history[-1]["val/loss"]

    # SWA from epoch 2: epoch 1 validates the recalibrated raw model, epoch 2 SWA's average with its own pass
    swa = ["trainer.swa.enabled=true", "trainer.swa.start_epoch=2"]
    off, _ = fit(make_cfg(*common, *swa, run="swa_off"))
    on, _ = fit(make_cfg(*common, *swa, *RECAL, run="swa_on"))
    assert on.trainer.history[0]["val/loss"] != off.trainer.history[0]["val/loss"]
    assert on.trainer.history[1]["val/loss"] == off.trainer.history[1]["val/loss"]
    assert same_tensors(on.trainer.task.average.module.state_dict(), off.trainer.task.average.module.state_dict())


@pytest.mark.integration
def test_a_model_without_batch_norm_says_so_once_and_trains_the_same(make_cfg, caplog):
    common = [*DIGITS, "model=mlp", "model.hidden=[32]", *FAST_SGD]
    off, _ = fit(make_cfg(*common, run="off"))
    with caplog.at_level(logging.INFO, logger="cnnlab"):
        on, _ = fit(make_cfg(*common, *RECAL, run="on"))
    said = [r.getMessage() for r in caplog.records if "bn_recalibrate" in r.getMessage()]
    assert len(said) == 1 and "no batch norm" in said[0]
    untimed = [[{k: v for k, v in h.items() if not k.startswith(("time/", "throughput/"))} for h in run.trainer.history]
               for run in (on, off)]
    assert untimed[0] == untimed[1]


@pytest.mark.parametrize("value", ["-1", "2.5", "true", "many"])
def test_a_bad_value_is_refused_before_training(make_cfg, value):
    with pytest.raises(ConfigError, match=r"trainer.bn_recalibrate=.* must be a non-negative integer"):
        prepare(make_cfg(*DIGITS, "model=mlp", f"trainer.bn_recalibrate={value}"), overrides=[])
