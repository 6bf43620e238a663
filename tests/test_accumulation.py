"""trainer.accumulate_grad_batches: k batches of b train like one batch of k*b, steps count optimizer steps, and a
run stopped mid-window resumes to the same weights."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from cnnlab.engine.callbacks import Callback
from cnnlab.errors import ConfigError, TrainingStopped
from cnnlab.run.lifecycle import prepare
from runs import fit

# The bundled digits at 8x8 and an MLP without batch norm or dropout, no augmentation: 1,439 training images, so
# batch 64 gives 23 batches (the last of 31 images) and batch 128 gives 12 (the last of the same 31). With k=2 at 64
# the last window is that single batch: stepping on it, scaled by its own size, is exactly batch 128's last step.
# SGD's update is linear in the gradient (a wrong scale shows), and one-cycle steps lr and momentum per optimizer
# step (a wrong schedule length shows), ending at the peak rate so that the last step counts.
BASE = ["data=digits", "data.input_size=[8,8]", "model=mlp", "model.dropout=0.0", "model.batch_norm=false",
        "augment=none", "optimizer=sgd", "scheduler=onecycle", "scheduler.div_factor=2.0",
        "scheduler.final_div_factor=0.5", "logger=none", "trainer.summary=none", "trainer.max_epochs=1",
        "trainer.checkpoint.save_best=false", "trainer.test_with=last"]


def fitted(make_cfg, *overrides, run="run", callbacks=()):
    return fit(make_cfg(*BASE, *overrides, run=run), overrides, callbacks)[0]


def weights(run_) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in run_.model.state_dict().items()}


@pytest.fixture(scope="module")
def accumulated(tmp_path_factory):
    """k=2 at batch 64, one epoch, uninterrupted (shared by the tests that compare against it)."""
    from conftest import FAST, compose_cfg

    def make(*overrides, run="run"):
        return compose_cfg(tmp_path_factory.mktemp("acc") / run, *FAST, *overrides)

    return fitted(make, "data.batch_size=64", "trainer.accumulate_grad_batches=2")


def test_two_batches_of_b_accumulated_train_like_one_batch_of_2b(make_cfg, accumulated):
    big = fitted(make_cfg, "data.batch_size=128", "trainer.accumulate_grad_batches=1")
    assert len(accumulated.data.train) == 23 and len(big.data.train) == 12
    # global_step and the per-step schedule count optimizer steps: 11 windows of 2 and the last batch alone
    assert accumulated.trainer.global_step == big.trainer.global_step == 12
    assert accumulated.trainer.task.schedule.scheduler.total_steps == 12
    assert accumulated.trainer.history[-1]["lr"] == pytest.approx(big.trainer.history[-1]["lr"])
    a, b = weights(accumulated), weights(big)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-6, msg=name)
    # training metrics are over the same images
    assert accumulated.trainer.history[-1]["train/loss"] == pytest.approx(big.trainer.history[-1]["train/loss"],
                                                                         rel=1e-4)


def test_without_accumulation_batch_b_differs(make_cfg, accumulated):
    """The comparison above can fail: batch 64 stepped every batch ends elsewhere."""
    plain = fitted(make_cfg, "data.batch_size=64")
    assert plain.trainer.global_step == 23
    a, p = weights(accumulated), weights(plain)
    assert any(not torch.allclose(a[n], p[n], rtol=1e-3, atol=1e-5) for n in a)


def test_the_gradient_scaler_sees_the_summed_window(make_cfg, accumulated):
    """fp16's path (a GradScaler scales every batch's loss, unscales and steps once per window), driven on CPU in
    fp32: the same weights as without a scaler."""
    run_ = prepare(make_cfg(*BASE, "data.batch_size=64", "trainer.accumulate_grad_batches=2"), overrides=[])
    run_.trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    run_.trainer.fit(run_.data.train, run_.data.val)
    run_.trainer.teardown()
    assert run_.trainer.scaler.get_scale() == 2.0 ** 12  # no step was skipped
    a, s = weights(accumulated), weights(run_)
    for name in a:
        torch.testing.assert_close(s[name], a[name], rtol=1e-5, atol=1e-7, msg=name)


class StopAt(Callback):
    """Sends SIGTERM after batch `at` (the first of a window): the run must finish the window first."""

    def __init__(self, at: int):
        self.at, self.seen = at, []

    def on_train_batch_end(self, trainer, batch, outputs, step):
        self.seen.append((step, trainer.stepped))
        if step == self.at:
            os.kill(os.getpid(), signal.SIGTERM)


def test_a_stop_mid_window_checkpoints_after_the_window_and_resumes_to_the_same_weights(make_cfg, tmp_path,
                                                                                        accumulated):
    stop = StopAt(4)
    with pytest.raises(TrainingStopped, match="stopped by SIGTERM"):
        fitted(make_cfg, "data.batch_size=64", "trainer.accumulate_grad_batches=2", callbacks=(stop,))
    assert stop.seen[-2:] == [(4, False), (5, True)]  # stopped after batch 5, which stepped
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["partial"]["loader"]["batches"] == 6 and state["global_step"] == 3

    # one-cycle laid out its steps for k=2: another k cannot continue it
    other_k = [f"trainer.resume={tmp_path / 'run'}", "trainer.accumulate_grad_batches=4"]
    with pytest.raises(ConfigError, match="trainer.accumulate_grad_batches: 2 in the checkpoint, 4 now"):
        prepare(make_cfg(*BASE, *other_k, run="other"), overrides=other_k)

    overrides = [f"trainer.resume={tmp_path / 'run'}"]
    resumed = fitted(make_cfg, *overrides, run="again")
    assert resumed.trainer.global_step == 12
    a, r = weights(accumulated), weights(resumed)
    for name in a:
        torch.testing.assert_close(r[name], a[name], rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("value", ["0", "-2"])
def test_accumulation_below_one_is_refused_naming_the_key(make_cfg, value):
    with pytest.raises(ConfigError, match=rf"trainer.accumulate_grad_batches={value} must be a positive integer"):
        prepare(make_cfg(*BASE, f"trainer.accumulate_grad_batches={value}"), overrides=[])
