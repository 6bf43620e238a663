"""What bf16 autocast touches (trainer.precision=bf16, and auto where it picks bf16): the loss in fp32, fp32
weights, batch-norm statistics, averages, gradients and checkpoints, exact resumption (in bf16, or going on in
fp32), fp32 batches from the fast data path, accumulation, and an fp32 export. The doctor's checks:
tests/test_doctor.py; two processes under torchrun: tests/test_distributed.py."""

from __future__ import annotations

import pytest
import torch

from cnnlab.engine.callbacks import Callback
from cnnlab.engine.checkpoint import RAW_WEIGHTS, load_checkpoint
from cnnlab.engine.losses import Loss
from cnnlab.run.lifecycle import train
from runs import KillAfter, fit, same_tensors

# ResNet-20 (batch norm, convolutions) on the 8x8 digits: a few steps take a fraction of a second
SMALL = ["data=digits", "data.input_size=[8,8]", "model=resnet20", "augment=none", "logger=none",
         "trainer.summary=none", "trainer.precision=bf16", "trainer.limit_train_batches=4"]


def floating(state: dict) -> dict:
    return {k: v for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point()}


@pytest.mark.parametrize("name", ["cross_entropy", "bce", "mse"])
@pytest.mark.parametrize("targets", ["labels", "dense"])
@pytest.mark.parametrize("weight", [None, [1.0, 2.0, 0.5]])
def test_every_loss_is_computed_in_fp32_from_bf16_logits(name, targets, weight):
    torch.manual_seed(0)
    logits = torch.randn(6, 3).bfloat16()
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    target = labels if targets == "labels" else torch.softmax(torch.randn(6, 3), 1)  # mixup-like soft targets
    loss = Loss(name, label_smoothing=0.1, weight=weight)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(logits, target)
    assert value.dtype == torch.float32
    assert torch.equal(value, loss(logits.float(), target))  # the same bf16 logits, everything after in fp32


class Watch(Callback):
    """Records, after each training batch, the batch's dtype and layout and the gradients' dtypes."""

    def __init__(self):
        self.inputs, self.grads = [], set()

    def on_train_batch_end(self, trainer, batch, outputs, step):
        x, _ = batch
        self.inputs.append((x.dtype, x.is_contiguous()))
        self.grads |= {p.grad.dtype for p in trainer.task.model.parameters() if p.grad is not None}


def test_fp32_batches_go_in_and_fp32_gradients_accumulate_over_the_window(make_cfg):
    watch = Watch()
    run, history = fit(make_cfg(*SMALL, "trainer.accumulate_grad_batches=2", "trainer.max_epochs=1",
                                "trainer.limit_train_batches=5"), callbacks=(watch,))
    assert watch.inputs == [(torch.float32, True)] * 5  # normalised fp32 from the fast path; autocast casts
    assert watch.grads == {torch.float32}
    assert run.trainer.global_step == 3  # windows of 2, 2 and 1 batches
    assert history[-1]["train/loss"] < 10


def test_weights_batch_norm_statistics_and_the_ema_stay_fp32_in_the_model_and_its_checkpoint(make_cfg, tmp_path):
    run, _ = fit(make_cfg(*SMALL, "trainer.ema.enabled=true", "trainer.bn_recalibrate=2", "trainer.max_epochs=1"))
    assert run.trainer.context.precision.name == "bf16"
    dtypes = {v.dtype for v in floating(run.model.state_dict()).values()}
    dtypes |= {v.dtype for v in floating(run.trainer.task.average.module.state_dict()).values()}
    assert dtypes == {torch.float32}
    saved = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    for weights in (saved["model"], saved[RAW_WEIGHTS]):
        assert {v.dtype for v in floating(weights).values()} == {torch.float32}
    assert any(k.endswith("running_var") for k in saved["model"])


def test_a_bf16_run_resumes_exactly_and_can_go_on_in_fp32(make_cfg, tmp_path):
    common = [*SMALL, "trainer.max_epochs=3", "optimizer=sgd", "scheduler=none"]
    full = train(make_cfg(*common, run="full"), overrides=[])
    with pytest.raises(KeyboardInterrupt, match="simulated kill after epoch 1"):
        train(make_cfg(*common, run="killed"), overrides=[], callbacks=(KillAfter(1),))
    resume = [f"trainer.resume={tmp_path / 'killed'}"]
    resumed = train(make_cfg(*resume, run="resumed"), overrides=resume)
    for key in ("test/loss", "test/acc", "best_val/loss", "precision"):
        assert resumed[key] == full[key], key
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.ckpt")
    b = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.ckpt")
    assert same_tensors(a["model"], b["model"])

    in_fp32 = [*resume, "trainer.precision=32"]  # the saved weights are fp32: the rest of the run can be too
    continued = train(make_cfg(*in_fp32, run="fp32"), overrides=in_fp32)
    assert continued["precision"] == "32" and continued["epochs_completed"] == 3
    assert continued["test/loss"] != full["test/loss"]  # epochs 2 and 3 really ran in fp32


def test_a_bf16_runs_export_is_fp32_and_agrees_with_the_model(make_cfg, tmp_path):
    from cnnlab.cli.export import export, load_exported

    train(make_cfg(*SMALL, "trainer.max_epochs=1"), overrides=[])
    result = export(str(tmp_path / "run"), "torchscript", str(tmp_path / "model.pt"))
    assert {p.dtype for p in torch.jit.load(result["path"]).parameters()} == {torch.float32}
    assert result["check_max_abs_diff"] < 1e-5  # the export's own check against the fp32 model
    assert load_exported("torchscript", result["path"])(torch.rand(4, 1, 8, 8)).dtype == torch.float32


def test_local_response_norm_runs_in_fp32_under_autocast():
    """AlexNet's LRN (and the ConvNet's lrn layer) compute from fp32 maps under bf16 autocast: with LRN in bf16,
    AlexNet-small trained several points worse than in fp32 (docs/benchmarks.md, accuracy parity)."""
    from cnnlab.models.layers import LocalResponseNorm

    lrn = LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=2.0)
    x = torch.randn(2, 8, 6, 6).relu().bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = lrn(x)
    assert out.dtype == torch.float32 and torch.equal(out, torch.nn.LocalResponseNorm(5, 1e-4, 0.75, 2.0)(x.float()))
    assert lrn(x.float()).dtype == torch.float32  # outside autocast: torch's own
    from cnnlab.models.alexnet import AlexNetSmall

    assert sum(isinstance(m, LocalResponseNorm) for m in AlexNetSmall(1, 10, (28, 28)).modules()) == 2
