"""The batched RandomResizedCrop and ColorJitter (the `imagenet` preset on the fast path) against torchvision:
same parameter distributions, same pixels for the same parameters."""

from __future__ import annotations

import math

import pytest
import torch
from cnnlab.data import build_data
from cnnlab.data.augment import batched_unsupported
from cnnlab.data.batch_colour import ColorJitter
from cnnlab.data.batch_geometry import RandomResizedCrop
from cnnlab.config.typed import data_section
from omegaconf import OmegaConf
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

CPU = torch.device("cpu")
DRAWS = 4000
JITTER_FNS = {"brightness": TF.adjust_brightness, "contrast": TF.adjust_contrast,
              "saturation": TF.adjust_saturation, "hue": TF.adjust_hue}
OPS = list(JITTER_FNS)  # torchvision's fn_idx order


def ours_boxes(rrc: RandomResizedCrop, h: int, w: int, n: int = DRAWS, seed: int = 0) -> dict[str, torch.Tensor]:
    return rrc.sample(n, h, w, torch.Generator().manual_seed(seed), CPU)


def torchvision_boxes(h: int, w: int, n: int = DRAWS, **kwargs) -> dict[str, torch.Tensor]:
    theirs = v2.RandomResizedCrop(size=[h, w], **kwargs)
    torch.manual_seed(0)
    image = [torch.zeros(1, h, w)]
    draws = [theirs.make_params(image) for _ in range(n)]
    return {key: torch.tensor([d[key] for d in draws]) for key in ("top", "left", "height", "width")}


def box_stats(box: dict[str, torch.Tensor], h: int, w: int) -> dict[str, torch.Tensor]:
    return {"area": (box["height"] * box["width"]).float() / (h * w),
            "log_ratio": torch.log(box["width"].float() / box["height"].float()),
            # where the box sits within its free range (0..1), for boxes that can move
            "place": (box["top"].float() / (h - box["height"]).clamp_min(1))[box["height"] < h]}


def test_crop_boxes_follow_torchvision_distribution():
    # A non-square image and an asymmetric ratio range, so swapping height and width would show.
    h, w, scale, ratio = 24, 32, (0.08, 1.0), (0.4, 1.2)
    ours = ours_boxes(RandomResizedCrop([h, w], scale=scale, ratio=ratio), h, w)
    theirs = torchvision_boxes(h, w, scale=scale, ratio=ratio)
    for box in (ours, theirs):
        assert (box["top"] >= 0).all() and (box["top"] + box["height"] <= h).all()
        assert (box["left"] >= 0).all() and (box["left"] + box["width"] <= w).all()
    a, b = box_stats(ours, h, w), box_stats(theirs, h, w)
    # Standard errors of a mean difference with 4000 draws a side: ~0.005 (area share, spread 0.2), ~0.007
    # (log-ratio, spread 0.3), ~0.008 (placement, spread 0.36); the tolerances are 6-7 of those, quantiles get
    # 1.5x. The log-ratio mean sits near -0.25 and would be +0.25 if width and height were swapped.
    for key, tol in (("area", 0.03), ("log_ratio", 0.05), ("place", 0.05)):
        assert abs(a[key].mean() - b[key].mean()) < tol, key
        qs = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9])
        assert (torch.quantile(a[key], qs) - torch.quantile(b[key], qs)).abs().max() < 1.5 * tol, key
    assert a["log_ratio"].mean() < -0.15 and b["log_ratio"].mean() < -0.15


def test_fallback_rate_matches_when_few_tries_fit():
    # Areas of 90-96% of a 32x32 image fit only at aspect ratios near 1: about a fifth of the draws use up
    # all ten tries and take torchvision's fallback, the whole image (which no fitting try can produce here:
    # 32x32 needs an area share above 0.969).
    h = w = 32
    scale, ratio = (0.9, 0.96), (0.5, 2.0)
    ours = ours_boxes(RandomResizedCrop(32, scale=scale, ratio=ratio), h, w)
    theirs = torchvision_boxes(h, w, scale=scale, ratio=ratio)
    whole = (ours["height"] == h) & (ours["width"] == w)
    assert torch.equal(whole, ~ours["fitted"]) and (ours["top"][whole] == 0).all() and (ours["left"][whole] == 0).all()
    ours_rate = (~ours["fitted"]).float().mean()
    their_rate = ((theirs["height"] == h) & (theirs["width"] == w)).float().mean()
    assert 0.1 < their_rate < 0.35
    assert abs(ours_rate - their_rate) < 0.04  # standard error of the difference ~0.009


@pytest.mark.parametrize("h,w,ratio", [(24, 32, (0.5, 1.2)), (32, 24, (0.9, 2.0)), (30, 30, (1.5, 2.0))])
def test_fallback_box_equals_torchvision(h, w, ratio):
    # Nearly the whole image at a ratio the image is too wide or too tall for never fits: every draw takes
    # the fallback (the image cut to the nearest end of the ratio range), which is deterministic.
    scale = (0.99, 1.0)
    theirs = torchvision_boxes(h, w, n=1, scale=scale, ratio=ratio)
    ours = ours_boxes(RandomResizedCrop([h, w], scale=scale, ratio=ratio), h, w, n=50)
    assert not ours["fitted"].any()
    for key in ("top", "left", "height", "width"):
        assert (ours[key] == theirs[key][0]).all(), key


BOXES = [(0, 0, 32, 32), (3, 5, 10, 17), (10, 2, 20, 8), (31, 31, 1, 1), (0, 4, 32, 20), (7, 0, 25, 32)]


@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
@pytest.mark.parametrize("size,antialias", [((32, 32), True), ((24, 20), True), ((24, 20), False), ((48, 40), True)])
def test_fixed_box_equals_torchvision_resized_crop(interpolation, size, antialias):
    """Same box, same pixels. Bilinear: torch's interpolate source positions, rebuilt for grid_sample, differ
    from interpolate's in the last float bits (~1e-5 of 255). Boxes larger than the output go through
    interpolate(antialias=True) itself, as in torchvision, so shrinking is held to the same tolerance;
    antialias=False shrinks them with the grid_sample path. Nearest is index arithmetic: exact."""
    images = torch.rand(len(BOXES), 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 255
    top, left, height, width = (torch.tensor(v) for v in zip(*BOXES))
    rrc = RandomResizedCrop(list(size), interpolation=interpolation, antialias=antialias)
    out = rrc.apply(images, dict(top=top, left=left, height=height, width=width))
    for i, (t, l, bh, bw) in enumerate(BOXES):
        ref = TF.resized_crop(images[i], t, l, bh, bw, list(size), interpolation=TF.InterpolationMode(interpolation),
                              antialias=antialias)
        if interpolation == "nearest":
            assert torch.equal(out[i], ref), BOXES[i]
        else:
            torch.testing.assert_close(out[i], ref, atol=1e-3, rtol=0, msg=lambda m: f"{BOXES[i]}: {m}")


def entries(*items):
    return OmegaConf.create([dict(_target_="torchvision.transforms.v2." + name, **kwargs) for name, kwargs in items])


def test_other_interpolations_leave_it_to_the_dataloader_path():
    spec = entries(("RandomResizedCrop", dict(size=32, interpolation="bicubic")),
                   ("RandomResizedCrop", dict(size=32, interpolation="InterpolationMode.NEAREST")),
                   ("ColorJitter", dict(brightness=0.4, hue=0.1)))
    assert batched_unsupported(spec) == ["RandomResizedCrop(interpolation bicubic)"]


def jitter_images(channels: int, n: int = 12) -> torch.Tensor:
    """Random pixels plus the awkward ones: pure black/white/primary colours and grey pixels (hue undefined)."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, channels, 16, 16, generator=g) * 255
    x[0] = (x[0] > 128).float() * 255
    x[1] = x[1, :1].expand_as(x[1])
    x[2] = 0
    return x


def torchvision_jitter(image01: torch.Tensor, order, factors: dict[str, float]) -> torch.Tensor:
    for name in order:
        if name in factors:
            image01 = JITTER_FNS[name](image01, factors[name])
    return image01


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("op,factor", [("brightness", 1.7), ("brightness", 0.3), ("contrast", 1.8),
                                       ("contrast", 0.4), ("saturation", 2.5), ("saturation", 0.2),
                                       ("hue", 0.23), ("hue", -0.41)])
def test_one_jitter_op_equals_torchvision(channels, op, factor):
    """A fixed factor (a range of one value) of one op against torchvision's functional on [0, 1] floats;
    1-channel images: saturation and hue leave them as they are, contrast uses the image as its grey."""
    jitter = ColorJitter(**{op: (factor, factor)})
    x = jitter_images(channels)
    params = jitter.sample(len(x), 16, 16, torch.Generator().manual_seed(0), CPU)
    assert (params[op] == factor).all()
    out = jitter.apply(x, params)
    for i in range(len(x)):
        ref = torchvision_jitter(x[i] / 255, [op], {op: factor}) * 255
        torch.testing.assert_close(out[i], ref, atol=1e-3 * 255, rtol=0)


@pytest.mark.parametrize("channels", [3, 1])
def test_jitter_in_each_images_order_equals_torchvision(channels):
    jitter = ColorJitter(brightness=0.6, contrast=0.6, saturation=0.8, hue=0.3)
    x = jitter_images(channels, n=40)
    params = jitter.sample(len(x), 16, 16, torch.Generator().manual_seed(5), CPU)
    out = jitter.apply(x, params)
    for i in range(len(x)):
        order = [OPS[k] for k in params["order"][i].tolist()]
        ref = torchvision_jitter(x[i] / 255, order, {name: float(params[name][i]) for name in OPS}) * 255
        torch.testing.assert_close(out[i], ref, atol=1e-3 * 255, rtol=0)


def test_order_is_per_image_and_matters():
    """Two copies of one image, same factors, opposite orders: brightness 2 clips highlights before or after
    contrast 0.5 pulls everything to the mean, so the results differ; each matches torchvision's order."""
    jitter = ColorJitter(brightness=(2.0, 2.0), contrast=(0.5, 0.5))
    x = jitter_images(3, n=4)[3:4].expand(2, 3, 16, 16)
    params = jitter.sample(2, 16, 16, torch.Generator().manual_seed(0), CPU)
    params["order"] = torch.tensor([[0, 1, 2, 3], [1, 0, 3, 2]])
    out = jitter.apply(x, params)
    assert (out[0] - out[1]).abs().max() > 10
    for i, order in enumerate((OPS, ["contrast", "brightness", "hue", "saturation"])):
        ref = torchvision_jitter(x[i] / 255, order, {"brightness": 2.0, "contrast": 0.5}) * 255
        torch.testing.assert_close(out[i], ref, atol=1e-3 * 255, rtol=0)
    orders = jitter.sample(DRAWS, 16, 16, torch.Generator().manual_seed(1), CPU)["order"]
    assert len({tuple(o) for o in orders.tolist()}) == 24  # every permutation turns up


def test_jitter_factors_and_orders_follow_torchvision_distribution():
    kwargs = dict(brightness=0.4, contrast=(0.5, 1.9), saturation=1.5, hue=0.1)
    ours = ColorJitter(**kwargs).sample(DRAWS, 8, 8, torch.Generator().manual_seed(0), CPU)
    theirs_t = v2.ColorJitter(**kwargs)
    torch.manual_seed(0)
    draws = [theirs_t.make_params([torch.zeros(3, 8, 8)]) for _ in range(DRAWS)]
    theirs = {name: torch.tensor([d[f"{name}_factor"] for d in draws]) for name in OPS}
    # a number v -> [max(0, 1 - v), 1 + v]; hue v -> [-v, v]; a pair -> itself
    for name, (lo, hi) in (("brightness", (0.6, 1.4)), ("contrast", (0.5, 1.9)), ("saturation", (0.0, 2.5)),
                           ("hue", (-0.1, 0.1))):
        for values in (ours[name], theirs[name]):
            assert lo <= values.min() and values.max() <= hi, name
            assert values.min() < lo + 0.01 * (hi - lo) and values.max() > hi - 0.01 * (hi - lo), name
        # uniform: standard error of the mean difference ~0.0065 of the range
        assert abs(ours[name].mean() - theirs[name].mean()) < 0.03 * (hi - lo), name
        assert abs(ours[name].std() - (hi - lo) / math.sqrt(12)) < 0.03 * (hi - lo), name
    first_ours = torch.bincount(ours["order"][:, 0], minlength=4).float() / DRAWS
    first_theirs = torch.bincount(torch.stack([d["fn_idx"][0] for d in draws]), minlength=4).float() / DRAWS
    assert (first_ours - 0.25).abs().max() < 0.03 and (first_theirs - 0.25).abs().max() < 0.03  # SE ~0.007


def test_imagenet_preset_takes_the_fast_path(make_cfg):
    for data in (["data=shapes", "data.num_samples=400"], []):  # 3 channels; the default 1-channel digits
        cfg = make_cfg("augment=imagenet", *data)
        bundle = build_data(data_section(cfg.data), 0, CPU, cfg.augment)
        assert bundle.loader_kind == "tensor"
        x, y = next(iter(bundle.train))
        assert x.shape[1:] == (bundle.info.in_channels, *bundle.info.input_size) and torch.isfinite(x).all()


@pytest.mark.integration  # starts processes: a training's data loader workers or a command
def test_training_with_the_imagenet_preset_on_the_fast_path(make_cfg, monkeypatch):
    from cnnlab.data import build as build_module
    from cnnlab.data import bundle as bundle_module
    from cnnlab.run.lifecycle import train

    def no_dataloader_path(transforms):
        raise AssertionError("augment=imagenet took the per-sample DataLoader path")

    monkeypatch.setattr(build_module, "build_v2_pipeline", no_dataloader_path)
    monkeypatch.setattr(bundle_module, "build_v2_pipeline", no_dataloader_path)  # the pipeline's trial run
    cfg = make_cfg("augment=imagenet", "trainer.max_epochs=1", "trainer.limit_train_batches=3")
    metrics = train(cfg, overrides=[])
    assert math.isfinite(metrics["test/loss"]) and metrics["epochs_completed"] == 1
