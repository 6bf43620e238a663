"""The fast (batched) path and the per-sample torchvision path must augment alike, and eval must never augment."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from cnnlab.data import build_data
from cnnlab.data.augment import BatchAugment, build_v2_pipeline
from cnnlab.data.batch_geometry import RandomAffine, RandomErasing, box_tries
from cnnlab.data.mixing import BatchMix
from cnnlab.errors import ConfigError
from cnnlab.config.typed import data_section
from omegaconf import OmegaConf
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

CPU = torch.device("cpu")
V2 = "torchvision.transforms.v2."


def entries(*items):
    return OmegaConf.create([dict(_target_=V2 + name, **kwargs) for name, kwargs in items])


def position_images(n: int, h: int = 12, w: int = 12) -> torch.Tensor:
    """Channel 0 holds row+1, channel 1 col+1, so a crop's first pixel tells where it came from (0 = padding)."""
    rows = torch.arange(1, h + 1).view(h, 1).expand(h, w)
    cols = torch.arange(1, w + 1).view(1, w).expand(h, w)
    return torch.stack([rows, cols, torch.zeros(h, w, dtype=torch.long)]).to(torch.uint8).expand(n, 3, h, w).clone()


def both_paths(transforms, images):
    """(batched output, per-sample torchvision output) on the same images."""
    fast = BatchAugment(transforms)(images.float(), torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    pipeline = build_v2_pipeline(transforms)
    slow = torch.stack([pipeline(img) for img in images]).float()
    return fast, slow


def crop_offsets(out: torch.Tensor, pad: int, channel: int) -> torch.Tensor:
    """Where each window started in the padded image: along rows (channel 0) or columns (channel 1)."""
    profile = out[:, channel].amax(dim=2 if channel == 0 else 1)  # per row (column): largest position label
    first = profile.ne(0).int().argmax(dim=1)      # first row/column that lies inside the image
    value = profile[torch.arange(len(out)), first]  # its 1-based position in the original image
    return pad - first + value.long() - 1


def test_crop_offsets_cover_the_same_range_uniformly():
    images = position_images(3000)
    fast, slow = both_paths(entries(("RandomCrop", dict(size=[12, 12], padding=2))), images)
    for out in (fast, slow):
        for channel in (0, 1):
            offsets = crop_offsets(out, 2, channel)
            assert offsets.min() == 0 and offsets.max() == 4  # never outside the padded image
            share = torch.bincount(offsets, minlength=5).float() / len(offsets)
            assert (share - 0.2).abs().max() < 0.04  # uniform over the 5 offsets


def test_flip_rate_matches():
    images = position_images(4000)
    fast, slow = both_paths(entries(("RandomHorizontalFlip", dict(p=0.3))), images)
    for out in (fast, slow):
        flipped = (out[:, 1, 0, 0] == 12).float().mean()  # column 12 moved to the left edge
        assert abs(flipped - 0.3) < 0.03


def test_batched_affine_is_pixel_identical_to_torchvision():
    images = torch.randint(0, 256, (6, 3, 20, 24), dtype=torch.uint8)
    affine = RandomAffine(degrees=25, translate=[0.2, 0.1], scale=[0.8, 1.2], shear=[-10, 10, -5, 5])
    params = affine.sample(6, 20, 24, torch.Generator().manual_seed(3), CPU)
    out = affine.apply(images.float(), params)
    for i in range(6):
        ref = TF.affine(images[i], angle=float(params["angle"][i]),
                        translate=[int(params["tx"][i]), int(params["ty"][i])], scale=float(params["scale"][i]),
                        shear=[float(params["shear_x"][i]), float(params["shear_y"][i])])
        assert torch.equal(out[i], ref.float())


def test_affine_parameters_follow_torchvision_distribution():
    n, h, w = 4000, 28, 28
    ours = RandomAffine(degrees=10, translate=[0.1, 0.1], scale=[0.9, 1.1]).sample(n, h, w, torch.Generator().manual_seed(0), CPU)
    theirs = v2.RandomAffine(degrees=10, translate=[0.1, 0.1], scale=[0.9, 1.1])
    torch.manual_seed(0)
    ref = [theirs.make_params([torch.zeros(1, h, w)]) for _ in range(n)]
    ref_angle = torch.tensor([p["angle"] for p in ref])
    ref_tx = torch.tensor([float(p["translate"][0]) for p in ref])
    ref_scale = torch.tensor([p["scale"] for p in ref])
    assert ours["tx"].eq(ours["tx"].round()).all()  # whole pixels, as torchvision rounds them
    for a, b, lo, hi in ((ours["angle"], ref_angle, -10, 10), (ours["tx"], ref_tx, -3, 3), (ours["scale"], ref_scale, 0.9, 1.1)):
        assert a.min() >= lo and a.max() <= hi and b.min() >= lo and b.max() <= hi
        assert abs(a.mean() - b.mean()) < 0.05 * (hi - lo) and abs(a.std() - b.std()) < 0.05 * (hi - lo)
    assert torch.equal(torch.unique(ours["tx"]), torch.unique(ref_tx))  # same set of shifts: -3..3


def test_erasing_rate_and_area_match():
    images = torch.full((3000, 3, 32, 32), 200, dtype=torch.uint8)
    spec = entries(("RandomErasing", dict(p=0.5, scale=[0.02, 0.2], value=0)))
    fast, slow = both_paths(spec, images)
    stats = []
    for out in (fast, slow):
        erased = (out[:, 0] == 0).float().mean(dim=(1, 2))
        hit = erased > 0
        stats.append((hit.float().mean().item(), erased[hit].mean().item()))
        assert erased.max() <= 0.2 * 1.2  # area within the scale range (rounding of the box sides aside)
    (rate_a, area_a), (rate_b, area_b) = stats
    assert abs(rate_a - 0.5) < 0.03 and abs(rate_b - 0.5) < 0.03
    assert abs(area_a - area_b) < 0.01


def test_erasing_box_is_rectangular_and_inside():
    erase = RandomErasing(p=1.0, scale=[0.1, 0.3])
    params = erase.sample(200, 16, 20, torch.Generator().manual_seed(1), CPU)
    out = erase.apply(torch.ones(200, 1, 16, 20), params)
    for i in range(200):
        mask = out[i, 0] == 0
        rows, cols = mask.any(dim=1).nonzero().flatten(), mask.any(dim=0).nonzero().flatten()
        assert mask.sum() == len(rows) * len(cols) == params["height"][i] * params["width"][i]


@pytest.mark.parametrize("mix", [dict(mixup_alpha=0.4), dict(cutmix_alpha=1.0), dict(mixup_alpha=0.8, cutmix_alpha=1.0)])
def test_mixed_targets_sum_to_one_and_match_the_images(mix):
    torch.manual_seed(0)
    mixer = BatchMix(num_classes=5, **mix)
    mixer.start_epoch(7)
    for _ in range(20):
        x = torch.rand(16, 3, 8, 8)
        y = torch.randint(0, 5, (16,))
        mixed, target = mixer(x, y)
        assert torch.allclose(target.sum(dim=1), torch.ones(16))
        own = target[torch.arange(16), y]
        partner = target[torch.arange(16), y.roll(1)]
        same = y == y.roll(1)
        lam = own[~same][0] if (~same).any() else torch.tensor(1.0)
        assert torch.allclose(own[~same], lam) and torch.allclose(partner[~same], 1 - lam)
        # the image holds the same shares: lam of its own pixels (MixUp blend or CutMix area)
        from_self = (mixed == x).float().mean(dim=(1, 2, 3))
        blended = torch.allclose(mixed, lam * x + (1 - lam) * x.roll(1, 0), atol=1e-6)
        assert blended or torch.allclose(from_self[~same], lam, atol=1e-6)


def test_mix_runs_on_both_loader_paths(make_cfg):
    for loader in ("tensor", "dataloader"):
        cfg = make_cfg("augment=basic", "augment/mix=mixup_cutmix", f"data.loader={loader}")
        data = build_data(data_section(cfg.data), 0, CPU, cfg.augment)
        assert data.loader_kind == loader
        x, target = next(iter(data.train))
        assert target.shape == (len(x), 10) and torch.allclose(target.sum(dim=1), torch.ones(len(x)))
        _, labels = next(iter(data.val))
        assert labels.dtype == torch.long and labels.ndim == 1  # evaluation targets are never mixed


@pytest.mark.parametrize("augment", ["strong", "basic", "imagenet"])
def test_eval_data_is_never_augmented(make_cfg, augment):
    cfg = make_cfg("data=shapes", "data.num_samples=400", f"augment={augment}", "augment/mix=mixup")
    plain_cfg = make_cfg("data=shapes", "data.num_samples=400", "augment=none")
    data = build_data(data_section(cfg.data), 0, CPU, cfg.augment)
    plain = build_data(data_section(plain_cfg.data), 0, CPU, plain_cfg.augment)
    for split in ("val", "test"):
        for (x, y), (px, py) in zip(data.split(split), plain.split(split)):
            assert torch.equal(x, px) and torch.equal(y, py)


def test_auto_picks_the_fast_path_when_it_can_and_says_why_not(make_cfg, caplog):
    caplog.set_level(logging.INFO)
    for augment, kind in (("basic", "tensor"), ("mnist", "tensor"), ("none", "tensor"), ("strong", "dataloader"),
                          ("imagenet", "tensor")):
        cfg = make_cfg(f"augment={augment}")
        assert build_data(data_section(cfg.data), 0, CPU, cfg.augment).loader_kind == kind
    assert "TrivialAugmentWide need per-sample transforms: using the DataLoader path" in caplog.text
    assert "tensor loader" in caplog.text and "dataloader loader" in caplog.text
    cfg = make_cfg("augment=basic", "data.loader=dataloader")
    assert build_data(data_section(cfg.data), 0, CPU, cfg.augment).loader_kind == "dataloader"
    cfg = make_cfg("augment=strong", "data.loader=tensor")
    with pytest.raises(ConfigError, match="data.loader=tensor cannot run .*TrivialAugmentWide"):
        build_data(data_section(cfg.data), 0, CPU, cfg.augment)


@pytest.mark.parametrize("loader", ["tensor", "dataloader"])
def test_crop_larger_than_the_image_fails_before_training(make_cfg, loader):
    cfg = make_cfg(f"data.loader={loader}", "augment=basic", "augment.transforms.0.size=[40,40]",
                   "augment.transforms.0.padding=0")
    with pytest.raises(ConfigError, match="augment"):
        build_data(data_section(cfg.data), 0, CPU, cfg.augment)


def test_size_changing_pipeline_is_refused(make_cfg):
    cfg = make_cfg("augment=imagenet", "augment.transforms.0.size=[20,20]")
    with pytest.raises(ConfigError, match=r"turn a \(1, 28, 28\) image into \(1, 20, 20\).*data.input_size"):
        build_data(data_section(cfg.data), 0, CPU, cfg.augment)


def test_box_tries_draws_boxes_of_the_asked_area_and_aspect_ratio():
    g = torch.Generator().manual_seed(0)
    log_ratio = (math.log(0.5), math.log(2.0))
    long_side, short_side = box_tries(64, 20, 30, (0.1, 0.4), log_ratio, g, "cpu")
    assert long_side.shape == short_side.shape == (64, 10) and long_side.dtype == torch.long
    area = (long_side * short_side).float() / (20 * 30)
    ratio = long_side.float() / short_side.float()
    assert area.min() > 0.05 and area.max() < 0.45  # 0.1-0.4 of the image, give or take the rounding
    assert ratio.min() > 0.4 and ratio.max() < 2.5
