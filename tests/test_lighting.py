"""AlexNet's PCA colour augmentation ("lighting"): the eigen-decomposition, the per-sample and batched
transforms, the cached PCA, and the augment=alexnet preset on both loader paths."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cnnlab.data import build_data
from cnnlab.data.augment import BATCHED, BatchAugment, batched_unsupported, build_v2_pipeline
from cnnlab.data.transforms import Lighting
from cnnlab.data.transforms import lighting
from cnnlab.errors import ConfigError
from cnnlab.run.restore import check_trusted_targets
from cnnlab.config.typed import data_section
from omegaconf import OmegaConf

CPU = torch.device("cpu")
# ImageNet's PCA as fb.resnet.torch gives it (column i is the eigenvector of eigval[i])
EIGVAL = [0.2175, 0.0188, 0.0045]
EIGVEC = [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]]
SHAPES = ["data=shapes", "data.num_samples=240", "data.input_size=[16,16]", "data.image_size=16"]


def _images(n=5, seed=0):
    return torch.randint(0, 256, (n, 3, 9, 11), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_alpha_zero_is_the_identity():
    images = _images()
    per_sample, batched = Lighting(0.1, EIGVAL, EIGVEC), lighting.BatchLighting(0.1, EIGVAL, EIGVEC)
    for img in images:
        assert torch.equal(per_sample.apply(img, torch.zeros(3)), img)
        as_float = img.float() / 255
        assert torch.equal(per_sample.apply(as_float, torch.zeros(3)), as_float)
    assert torch.equal(batched.apply(images.float(), {"alpha": torch.zeros(5, 3)}), images.float())
    # alphastd = 0 draws nothing and changes nothing, on both paths
    torch.manual_seed(0)
    assert torch.equal(Lighting(0.0, EIGVAL, EIGVEC)(images[0]), images[0])
    assert torch.equal(lighting.BatchLighting(0.0, EIGVAL, EIGVEC)(images.float(), torch.Generator()), images.float())


def test_the_shift_is_the_sum_of_alpha_lambda_v_on_every_pixel():
    grey = torch.full((3, 4, 4), 128, dtype=torch.uint8)
    alpha = torch.tensor([0.3, -1.0, 2.0])
    want = sum(alpha[i] * EIGVAL[i] * torch.tensor(EIGVEC)[:, i] for i in range(3))  # in [0, 1] units
    out = Lighting(0.1, EIGVAL, EIGVEC).apply(grey.float() / 255, alpha)
    assert torch.allclose(out - 128 / 255, want.view(3, 1, 1).expand(3, 4, 4), atol=1e-6)
    out = lighting.BatchLighting(0.1, EIGVAL, EIGVEC).apply(grey[None].float(), {"alpha": alpha[None]})
    assert torch.allclose(out[0] - 128, 255 * want.view(3, 1, 1).expand(3, 4, 4), atol=1e-4)


def test_batched_matches_per_sample_for_the_same_alphas():
    images = _images(64)
    batched = lighting.BatchLighting(0.1, EIGVAL, EIGVEC)
    params = batched.sample(64, 9, 11, torch.Generator().manual_seed(1), CPU)
    params["alpha"] *= 30  # large shifts, so that clamping at 0 and 255 is exercised too
    fast = batched.apply(images.float(), params)
    per_sample = Lighting(0.1, EIGVAL, EIGVEC)
    slow = torch.stack([per_sample.apply(img, a) for img, a in zip(images, params["alpha"])])
    assert (fast == 0).any() and (fast == 255).any()
    # per sample on uint8 rounds (as torchvision's uint8 path does); the batched path keeps floats
    assert (fast - slow.float()).abs().max() <= 0.5 + 1e-3
    as_float = torch.stack([per_sample.apply(img.float() / 255, a) for img, a in zip(images, params["alpha"])])
    assert torch.allclose(fast / 255, as_float, atol=1e-6)


def test_alphas_are_drawn_per_image_with_the_configured_spread():
    batched = lighting.BatchLighting(0.1, EIGVAL, EIGVEC)
    alpha = batched.sample(20000, 1, 1, torch.Generator().manual_seed(2), CPU)["alpha"]
    assert alpha.mean(dim=0).abs().max() < 0.005 and (alpha.std(dim=0) - 0.1).abs().max() < 0.005
    torch.manual_seed(3)  # the per-sample transform draws from torch's global RNG (seeded per sample by cnnlab)
    grey = torch.full((3, 1, 1), 128.0) / 255
    per_sample = Lighting(0.1, EIGVAL, EIGVEC)
    shifts = torch.stack([per_sample(grey) - grey for _ in range(3000)]).view(-1, 3)
    want = torch.tensor(EIGVEC) @ torch.diag(torch.tensor(EIGVAL) ** 2 * 0.01) @ torch.tensor(EIGVEC).T
    assert torch.allclose(torch.cov(shifts.T.double()).float(), want, atol=3e-5)  # Cov = V diag(sd^2 l^2) V^T


def test_eigen_decomposition_matches_numpy_on_a_known_covariance():
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    covariance = basis @ np.diag([0.05, 0.01, 0.002]) @ basis.T
    values, vectors = lighting.eigen(torch.from_numpy(covariance))
    np_values, np_vectors = np.linalg.eigh(covariance)
    assert values == pytest.approx(np_values[::-1].tolist(), abs=1e-12)  # descending
    vectors = np.array(vectors)
    assert np.allclose(np.abs(vectors.T @ np_vectors[:, ::-1]), np.eye(3), atol=1e-9)  # same vectors, up to sign
    assert np.allclose(vectors @ np.diag(values) @ vectors.T, covariance, atol=1e-12)
    # from pixels: the covariance of the [0, 1] RGB values of every pixel, as numpy computes it
    pixels = torch.randint(0, 256, (40, 3, 6, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    pixels[:, 1] = (pixels[:, 0].int() * 3 // 4 + pixels[:, 1].int() // 4).to(torch.uint8)  # correlated channels
    values, vectors = lighting.rgb_pca([pixels[:25], pixels[25:]])
    flat = pixels.permute(1, 0, 2, 3).reshape(3, -1).double().numpy() / 255
    np_values, np_vectors = np.linalg.eigh(np.cov(flat, bias=True))
    assert values == pytest.approx(np_values[::-1].tolist(), rel=1e-9)
    assert np.allclose(np.abs(np.array(vectors).T @ np_vectors[:, ::-1]), np.eye(3), atol=1e-9)


def _alexnet(make_cfg, *extra, run="run"):
    return make_cfg(*SHAPES, "augment=alexnet", *extra, run=run)


def test_the_pca_is_computed_once_and_the_cached_file_reused(make_cfg, tmp_path, monkeypatch):
    cfg = _alexnet(make_cfg)
    run_dir = tmp_path / "run"
    first = build_data(data_section(cfg.data), 42, CPU, cfg.augment, cache_dirs=[run_dir])
    saved = json.loads((run_dir / lighting.PCA_FILE).read_text())
    assert saved["fingerprint"]["images"] == first.sizes["train"]
    lighting_op = first.train.augment.ops[0]
    assert lighting_op.eigval.tolist() == pytest.approx(saved["eigval"], rel=1e-6)

    def no_recompute(chunks):
        raise AssertionError("the cached PCA should have been used")

    monkeypatch.setattr(lighting, "rgb_pca", no_recompute)
    again = build_data(data_section(cfg.data), 42, CPU, cfg.augment, cache_dirs=[run_dir])
    assert torch.equal(again.train.augment.ops[0].eigvec, lighting_op.eigvec)
    # a resumed run reads the first run's file (its own dir has none yet) and writes nothing there
    resumed_dir = tmp_path / "resumed"
    build_data(data_section(cfg.data), 42, CPU, cfg.augment, cache_dirs=[resumed_dir, run_dir])
    # another training split (another seed) does not take it
    with pytest.raises(AssertionError, match="cached PCA should have been used"):
        build_data(data_section(cfg.data), 7, CPU, cfg.augment, cache_dirs=[run_dir])


@pytest.mark.integration  # starts processes: a training's data loader workers or a command
def test_prepare_caches_the_pca_in_the_run_dir_and_a_resume_reuses_it(make_cfg, tmp_path, monkeypatch, caplog):
    from cnnlab.run.lifecycle import train

    short = ["model=convnet", "scheduler=none", "trainer.max_epochs=1", "trainer.limit_train_batches=2", "logger=none",
             "data.batch_size=32"]
    train(_alexnet(make_cfg, *short, run="first"), overrides=[])
    assert (tmp_path / "first" / lighting.PCA_FILE).is_file()
    monkeypatch.setattr(lighting, "rgb_pca", lambda chunks: pytest.fail("recomputed on resume"))
    overrides = [f"trainer.resume={tmp_path / 'first'}", "trainer.max_epochs=2"]
    with caplog.at_level("INFO"):
        metrics = train(make_cfg(*overrides, run="second"), overrides=overrides)
    assert metrics["epochs_completed"] == 2
    assert f"reuses the training split's RGB PCA from {tmp_path / 'first' / lighting.PCA_FILE}" in caplog.text


@pytest.mark.parametrize("loader", ["tensor", "dataloader"])
def test_the_alexnet_preset_runs_on_both_loader_paths(make_cfg, tmp_path, loader):
    cfg = _alexnet(make_cfg, f"data.loader={loader}", "data.num_workers=0")
    assert batched_unsupported(cfg.augment.transforms) == []  # auto takes the fast path
    data = build_data(data_section(cfg.data), 42, CPU, cfg.augment, cache_dirs=[tmp_path / "run"])
    assert data.loader_kind == loader
    x, _ = next(iter(data.train))
    assert x.shape[1:] == (3, 16, 16) and torch.isfinite(x).all()


def test_both_paths_build_lighting_from_the_yaml_entry():
    entry = OmegaConf.create([{"_target_": lighting.TARGET, "alphastd": 0.1, "eigval": EIGVAL, "eigvec": EIGVEC}])
    assert lighting.TARGET in BATCHED
    assert isinstance(BatchAugment(entry).ops[0], lighting.BatchLighting)
    pipeline = build_v2_pipeline(entry)  # a torchvision v2.Compose holding the per-sample transform
    torch.manual_seed(0)
    out = pipeline(_images(1)[0])
    assert out.dtype == torch.uint8 and out.shape == (3, 9, 11)


def test_grey_images_are_refused_with_one_clear_line(make_cfg):
    cfg = make_cfg("augment=alexnet")  # mnist_sample: 1 channel
    with pytest.raises(ConfigError, match=r"^augment.transforms\[0\]._target_=cnnlab.data.transforms.Lighting: "
                                          r"AlexNet's PCA lighting needs RGB images, but data.in_channels=1"):
        build_data(data_section(cfg.data), 42, CPU, cfg.augment)
    with pytest.raises(ConfigError, match="needs RGB images, got 1 channel"):
        Lighting(0.1, EIGVAL, EIGVEC).apply(torch.zeros(1, 4, 4, dtype=torch.uint8), torch.ones(3))


def test_bad_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="alphastd=-0.1 must be a number >= 0"):
        Lighting(-0.1, EIGVAL, EIGVEC)
    with pytest.raises(ConfigError, match="must be 3 numbers and a 3x3 matrix"):
        Lighting(0.1, EIGVAL[:2], EIGVEC)
    with pytest.raises(ConfigError, match="needs both eigval and eigvec, or neither"):
        Lighting(0.1, EIGVAL)
    with pytest.raises(ConfigError, match="has no eigval/eigvec: build_data computes them"):
        Lighting(0.1)(torch.zeros(3, 2, 2))


def test_a_saved_config_may_name_lighting_but_no_other_cnnlab_class(make_cfg):
    own = make_cfg()  # the user's config: augment=mnist, nothing of cnnlab's
    saved = make_cfg(*SHAPES, "augment=alexnet")
    check_trusted_targets(saved, own, "the saved config")  # allowed by trusted_targets: cnnlab.data.transforms.
    with pytest.raises(ConfigError, match="cnnlab.data.bundle.DataBundle' in the saved config is not trusted"):
        crafted = make_cfg(*SHAPES, "augment=alexnet", "augment.transforms.0._target_=cnnlab.data.bundle.DataBundle")
        check_trusted_targets(crafted, own, "the saved config")
