"""Class imbalance: class weights in every loss, the balanced sampler on both loader paths, and capping each
class's training images (data.max_per_class)."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from cnnlab.data import build_data
from cnnlab.data.balance import balanced_weights, capped_indices, draws_by_inverse_cdf
from cnnlab.data.loaders import EpochSampler, TensorLoader, shard
from cnnlab.errors import ConfigError
from cnnlab.engine.losses import Loss, resolve_class_weights
from cnnlab.run.restore import check_compatible
from cnnlab.run.lifecycle import prepare
from cnnlab.run.validate import validate
from cnnlab.config.typed import data_section

CPU = torch.device("cpu")
# digits: ~144 training images per class; five classes cut to 10 make a 10:1 imbalance
IMBALANCED = ["data=digits", "augment=none", "data.max_per_class=[100,100,100,100,100,10,10,10,10,10]"]
LOGITS = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0], [0.1, -0.3, 0.2], [1.0, 2.0, 0.0]])
LABELS = torch.tensor([0, 2, 1, 1])
WEIGHTS = [0.5, 2.0, 1.0]


def _log_softmax(row):
    top = max(row)
    log_sum = top + math.log(sum(math.exp(v - top) for v in row))
    return [v - log_sum for v in row]


def _softmax(row):
    return [math.exp(v) for v in _log_softmax(row)]


def test_cross_entropy_weights_are_a_weighted_mean_over_the_samples_labels():
    rows, labels = LOGITS.tolist(), LABELS.tolist()
    want = sum(-WEIGHTS[y] * _log_softmax(r)[y] for r, y in zip(rows, labels)) / sum(WEIGHTS[y] for y in labels)
    loss = Loss("cross_entropy", weight=WEIGHTS)
    assert loss(LOGITS, LABELS).item() == pytest.approx(want, rel=1e-6)
    assert Loss("cross_entropy")(LOGITS, LABELS).item() != pytest.approx(want, rel=1e-3)  # the weights matter
    # one-hot dense targets (an unmixed batch under augment/mix) give exactly what the labels give
    one_hot = torch.nn.functional.one_hot(LABELS, 3).float()
    assert loss(LOGITS, one_hot).item() == pytest.approx(want, rel=1e-6)
    # mixed targets: every class's term weighted by its class weight, over the targets' total weight
    mixed = 0.7 * one_hot + 0.3 * one_hot.roll(1, 0)
    t = mixed.tolist()
    num = sum(-WEIGHTS[c] * t[i][c] * _log_softmax(rows[i])[c] for i in range(4) for c in range(3))
    den = sum(WEIGHTS[c] * t[i][c] for i in range(4) for c in range(3))
    assert loss(LOGITS, mixed).item() == pytest.approx(num / den, rel=1e-6)
    # with label smoothing: torch's own weighted cross-entropy, unchanged
    smoothed = Loss("cross_entropy", 0.1, weight=WEIGHTS)(LOGITS, LABELS)
    torch_value = torch.nn.functional.cross_entropy(LOGITS, LABELS, weight=torch.tensor(WEIGHTS), label_smoothing=0.1)
    assert torch.allclose(smoothed, torch_value)


@pytest.mark.parametrize("name", ["bce", "mse"])
def test_bce_and_mse_weight_each_sample_by_its_class(name):
    rows, labels = LOGITS.tolist(), LABELS.tolist()

    def element(i, c):
        target = 1.0 if labels[i] == c else 0.0
        if name == "mse":
            return (_softmax(rows[i])[c] - target) ** 2
        x = rows[i][c]
        return max(x, 0) - x * target + math.log1p(math.exp(-abs(x)))  # BCE with logits, stable form

    per_sample = [sum(element(i, c) for c in range(3)) / 3 for i in range(4)]
    want = sum(WEIGHTS[y] * s for y, s in zip(labels, per_sample)) / sum(WEIGHTS[y] for y in labels)
    assert Loss(name, weight=WEIGHTS)(LOGITS, LABELS).item() == pytest.approx(want, rel=1e-6)
    assert Loss(name)(LOGITS, LABELS).item() == pytest.approx(sum(per_sample) / 4, rel=1e-6)
    assert Loss(name, weight=[1.0, 1.0, 1.0])(LOGITS, LABELS).item() == pytest.approx(sum(per_sample) / 4, rel=1e-6)


def test_auto_weights_are_balanced_and_average_one_per_training_image():
    sklearn_utils = pytest.importorskip("sklearn.utils")
    counts = [30, 10, 20, 5]
    labels = [c for c, n in enumerate(counts) for _ in range(n)]
    weights = resolve_class_weights("auto", counts)
    expected = sklearn_utils.compute_class_weight("balanced", classes=torch.arange(4).numpy(), y=labels)
    assert weights == pytest.approx(expected.tolist())
    assert sum(w * n for w, n in zip(weights, counts)) == pytest.approx(sum(counts))  # mean 1 per image
    assert resolve_class_weights(None, counts) is None
    assert resolve_class_weights([1, 2, 3, 4], counts) == [1.0, 2.0, 3.0, 4.0]


def test_class_weights_of_the_wrong_length_are_one_error_line_naming_num_classes(make_cfg):
    with pytest.raises(ConfigError, match=r"^trainer.class_weights has 3 values but the data has num_classes=10"):
        validate(make_cfg("data=digits", "trainer.class_weights=[1,2,3]"))
    with pytest.raises(ConfigError, match=r"num_classes=2 \(after data.class_subset\)"):
        validate(make_cfg("data=digits", "data.class_subset=[3,5]", "trainer.class_weights=[1,2,3]"))
    # an image folder's class count is known once its folders are read: the same message then
    with pytest.raises(ConfigError, match=r"^trainer.class_weights has 2 values but the data has num_classes=3"):
        resolve_class_weights([1, 2], [5, 5, 5])
    with pytest.raises(ConfigError, match=r"class\(es\) \[1\] have no training image"):
        resolve_class_weights("auto", [5, 0, 5])


def test_the_run_trains_with_the_resolved_weights_and_logs_them(make_cfg, caplog):
    with caplog.at_level(logging.INFO, logger="cnnlab"):
        run = prepare(make_cfg(*IMBALANCED, "trainer.class_weights=auto"), overrides=[])
    run.tb.close()
    counts = run.data.class_counts
    assert counts == [100] * 5 + [10] * 5
    want = [550 / (10 * n) for n in counts]
    assert run.trainer.task.loss.weight.tolist() == pytest.approx(want)
    assert "trainer.class_weights=auto: [0.55, 0.55, 0.55, 0.55, 0.55, 5.5, 5.5" in caplog.text


def _epoch_labels(loader, epoch):
    loader.set_epoch(epoch)
    return torch.cat([y for _, y in loader])


@pytest.mark.parametrize("loader", ["tensor", "dataloader"])
def test_balanced_sampler_draws_every_class_equally_often(make_cfg, loader):
    extra = [f"data.loader={loader}", "data.num_workers=0"]
    balanced = build_data(data_section(make_cfg(*IMBALANCED, *extra, "data.sampler=balanced").data), 42, CPU)
    plain = build_data(data_section(make_cfg(*IMBALANCED, *extra).data), 42, CPU)
    assert balanced.loader_kind == loader and balanced.sizes["train"] == 550
    drawn = [_epoch_labels(balanced.train, epoch) for epoch in range(4)]
    assert all(len(y) == 550 for y in drawn)  # an epoch has as many samples as the training set
    share = torch.bincount(torch.cat(drawn), minlength=10).float() / (4 * 550)
    assert (share - 0.1).abs().max() < 0.03  # 2,200 draws: every class ~10%, the rare ones too
    assert not torch.equal(drawn[0], drawn[1])  # a new order each epoch
    assert torch.equal(_epoch_labels(balanced.train, 2), drawn[2])  # ... that depends only on (seed, epoch)
    plain_share = torch.bincount(_epoch_labels(plain.train, 0), minlength=10).float() / 550
    assert plain_share[5:].tolist() == pytest.approx([10 / 550] * 5)  # random: each image once, imbalance kept


def test_draws_beyond_multinomials_limit_are_in_proportion_to_the_weights():
    """Training sets above torch.multinomial's 2^24 categories draw by inverse CDF: the same distribution."""
    labels = torch.tensor([0] * 9_000 + [1] * 900 + [2] * 100)
    draws = draws_by_inverse_cdf(balanced_weights(labels), 30_000, torch.Generator().manual_seed(0))
    assert draws.min() >= 0 and draws.max() < len(labels)
    share = torch.bincount(labels[draws], minlength=3).float() / 30_000
    assert (share - 1 / 3).abs().max() < 0.015, share  # each class a third, as with multinomial
    rare = torch.bincount(draws, minlength=len(labels))[9_900:].float()
    assert rare.mean() == pytest.approx(100, rel=0.05)  # each of the 100 rare images ~100 times
    again = draws_by_inverse_cdf(balanced_weights(labels), 30_000, torch.Generator().manual_seed(0))
    assert torch.equal(draws, again)  # the order depends only on the generator (seed, epoch)


def test_a_balanced_epoch_above_the_limit_takes_the_inverse_cdf_draws(monkeypatch):
    """The loaders' epoch order switches to inverse-CDF draws above multinomial's limit (lowered here to 40):
    the same order on every process before sharding, and the balanced distribution."""
    import cnnlab.data.balance as balance

    labels = torch.tensor([0] * 40 + [1] * 5 + [2] * 2)
    calls = []
    inverse_cdf = balance.draws_by_inverse_cdf
    monkeypatch.setattr(balance, "draws_by_inverse_cdf", lambda *a: calls.append(len(a[0])) or inverse_cdf(*a))
    list(EpochSampler(47, True, seed=7, labels=labels, balanced=True))
    assert calls == []  # multinomial below the limit
    monkeypatch.setattr(balance, "MULTINOMIAL_MAX_CATEGORIES", 40)
    above = list(EpochSampler(47, True, seed=7, labels=labels, balanced=True))
    assert calls == [47] and len(above) == 47 and all(0 <= i < 47 for i, _ in above)
    assert above == list(EpochSampler(47, True, seed=7, labels=labels, balanced=True))
    weights = balanced_weights(labels)
    drawn = torch.cat([balance.epoch_order(47, torch.Generator().manual_seed(s), "cpu", weights) for s in range(60)])
    share = torch.bincount(labels[drawn], minlength=3).float() / len(drawn)
    assert (share - 1 / 3).abs().max() < 0.05, share


def test_balanced_order_is_the_same_on_every_process_before_sharding():
    labels = torch.tensor([0] * 40 + [1] * 5 + [2] * 2)
    full = list(EpochSampler(47, True, seed=7, labels=labels, balanced=True))
    assert all(epoch == 0 for _, epoch in full)
    order = [i for i, _ in full]
    for world in (2, 3):
        parts = [[i for i, _ in EpochSampler(47, True, 7, rank, world, labels=labels, balanced=True)]
                 for rank in range(world)]
        assert parts == [shard(order, rank, world, pad=True) for rank in range(world)]
    images = torch.zeros(47, 1, 2, 2, dtype=torch.uint8)
    whole = TensorLoader(images, labels, 100, mean=[0.0], std=[1.0], shuffle=True, seed=7, sampler="balanced")
    full_y = torch.cat([y for _, y in whole])
    padded = torch.cat([full_y, full_y[:1]])
    for rank in range(2):
        part = TensorLoader(images, labels, 100, mean=[0.0], std=[1.0], shuffle=True, seed=7, sampler="balanced",
                            rank=rank, world=2)
        assert torch.equal(torch.cat([y for _, y in part]), padded[rank::2])


@pytest.mark.parametrize("loader", ["tensor", "dataloader"])
def test_a_balanced_epoch_resumes_mid_way_with_the_same_batches(make_cfg, loader):
    cfg = make_cfg(*IMBALANCED, f"data.loader={loader}", "data.num_workers=0", "data.sampler=balanced",
                   "data.batch_size=50", "augment=basic")
    full = build_data(data_section(cfg.data), 3, CPU, cfg.augment).train
    full.set_epoch(1)
    batches = list(full)
    head = build_data(data_section(cfg.data), 3, CPU, cfg.augment).train
    head.set_epoch(1)
    for i, _ in enumerate(head):
        if i == 3:
            state = head.state_dict()
            break
    resumed = build_data(data_section(cfg.data), 3, CPU, cfg.augment).train
    resumed.resume(state)
    tail = list(resumed)
    assert len(tail) == len(batches) - 4
    for (x, y), (fx, fy) in zip(tail, batches[4:]):
        assert torch.equal(x, fx) and torch.equal(y, fy)


def test_max_per_class_caps_the_training_split_only(make_cfg):
    whole = build_data(data_section(make_cfg("data=digits", "augment=none").data), 42, CPU)
    capped = build_data(data_section(make_cfg("data=digits", "augment=none", "data.max_per_class=20").data), 42, CPU)
    assert max(whole.class_counts) > 20 and capped.class_counts == [20] * 10
    assert capped.sizes["train"] == 200
    for split in ("val", "test"):  # unchanged: the cap applies after the split
        assert capped.sizes[split] == whole.sizes[split]
        assert torch.equal(torch.cat([y for _, y in capped.split(split)]), torch.cat([y for _, y in whole.split(split)]))
    listed = build_data(data_section(make_cfg("data=digits", "augment=none", "data.class_subset=[3,7,9]",
                                 "data.max_per_class=[5,200,12]").data), 42, CPU)
    assert listed.class_counts[0] == 5 and listed.class_counts[2] == 12
    assert listed.class_counts[1] == whole.class_counts[7]  # a cap above the class's count keeps them all
    with pytest.raises(ConfigError, match=r"^data.max_per_class has 2 values but the data has num_classes=10"):
        validate(make_cfg("data=digits", "data.max_per_class=[5,6]"))


def test_the_kept_images_depend_on_the_seed_and_a_higher_cap_keeps_the_lower_caps_images():
    labels = torch.arange(300) % 3
    small, large = capped_indices(labels, [10, 10, 10], seed=1), capped_indices(labels, [25, 25, 25], seed=1)
    assert torch.equal(small, capped_indices(labels, [10, 10, 10], seed=1))
    assert not torch.equal(small, capped_indices(labels, [10, 10, 10], seed=2))
    assert set(small.tolist()) <= set(large.tolist())
    assert torch.bincount(labels[small]).tolist() == [10, 10, 10]


def test_a_resume_may_not_change_the_cap_nor_mid_epoch_the_sampler(make_cfg):
    saved = make_cfg("data=digits", "data.max_per_class=20")
    with pytest.raises(ConfigError, match="data.max_per_class: 20 in the checkpoint, 30 now"):
        check_compatible(saved, make_cfg("data=digits", "data.max_per_class=30"), "last.ckpt")
    with pytest.raises(ConfigError, match="data.sampler: 'random' in the checkpoint, 'balanced' now"):
        check_compatible(saved, make_cfg("data=digits", "data.max_per_class=20", "data.sampler=balanced"),
                         "last.ckpt", mid_epoch=True)
    check_compatible(saved, make_cfg("data=digits", "data.max_per_class=20", "data.sampler=balanced"), "last.ckpt")
