"""The learning-rate range test of cnnlab-doctor: it leaves no trace, and its suggestion trains LeNet well."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from cnnlab.diagnose.lr_finder import LRRange, lr_range_test, plot_lr_range, suggestion_override


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
