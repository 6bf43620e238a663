"""The generated `shapes` data set: deterministic, balanced, learnable, and sized by its config."""

from __future__ import annotations

import pytest
import torch

from cnnlab.data.shapes import CLASSES, generate
from cnnlab.errors import ConfigError
from cnnlab.run.lifecycle import prepare, train


def test_same_seed_same_images_other_seed_other_images():
    a, la = generate(200, 32, seed=3)
    b, lb = generate(200, 32, seed=3)
    c, _ = generate(200, 32, seed=4)
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert not torch.equal(a, c)


def test_balanced_rgb_uint8_at_any_size():
    images, labels = generate(400, 48, seed=0)
    assert images.shape == (400, 3, 48, 48) and images.dtype == torch.uint8
    assert labels.bincount().tolist() == [50] * len(CLASSES)
    assert images.float().std() > 40  # shapes, colours and noise, not a flat canvas


def test_classes_differ_in_shape_not_in_colour():
    images, labels = generate(2000, 32, seed=0)
    mean_colour = images.float().mean(dim=(2, 3))  # (N, 3)
    per_class = torch.stack([mean_colour[labels == k].mean(0) for k in range(len(CLASSES))])
    # Average colour carries no class information: every class's mean is within a few levels of the others.
    assert float(per_class.max(0).values.sub(per_class.min(0).values).max()) < 12


@pytest.mark.integration  # starts processes: a training's data loader workers or a command
def test_shapes_config_trains_end_to_end(make_cfg):
    metrics = train(make_cfg("data=shapes", "data.num_samples=2400", "data.batch_size=32", "trainer.max_epochs=4",
                             "logger=none"), overrides=[])
    assert metrics["test/acc"] > 0.3  # 8 classes: chance is 0.125
    assert len(metrics["test/per_class_acc"]) == 8


def test_image_size_sets_the_data(make_cfg):
    run = prepare(make_cfg("data=shapes", "data.num_samples=160", "data.image_size=16", "data.input_size=[16,16]",
                           "logger=none"), overrides=[])
    assert tuple(run.data.train.images.shape[1:]) == (3, 16, 16)
    run.tb.close()


def test_bad_shapes_config(make_cfg):
    with pytest.raises(ConfigError, match="data.image_size=4 is too small"):
        prepare(make_cfg("data=shapes", "data.image_size=4"), overrides=[])
    with pytest.raises(ConfigError, match="data.num_samples=20 is too few"):
        prepare(make_cfg("data=shapes", "data.num_samples=20"), overrides=[])


@pytest.mark.slow
def test_resnet20_masters_shapes_in_a_short_cpu_run(make_cfg):
    metrics = train(make_cfg("data=shapes", "model=resnet20", "augment=basic", "trainer.max_epochs=10",
                             "logger=none"), overrides=[])
    assert metrics["test/acc"] > 0.95
