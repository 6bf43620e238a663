"""Every data source read from its real on-disk format (tiny copies written by tests/disk_formats.py)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from cnnlab.data import build_data
from cnnlab.errors import ConfigError
from cnnlab.config.typed import data_section

import disk_formats as disk

CPU = torch.device("cpu")


def _all(loader):
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


def _unnormalise(x, info):
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    return ((x * std + mean) * 255).round().to(torch.uint8)


def _build(make_cfg, *overrides, augment=None):
    cfg = make_cfg(*overrides)
    return build_data(data_section(cfg.data), int(cfg.seed), CPU, augment)


@pytest.mark.parametrize("name,folder,gz", [("mnist", "MNIST", False), ("fashion_mnist", "FashionMNIST", True),
                                            ("kmnist", "KMNIST", False)])
def test_mnist_family_reads_idx_files(make_cfg, tmp_path, name, folder, gz):
    written = disk.write_mnist_like(tmp_path / "d", folder, gz=gz)
    data = _build(make_cfg, f"data={name}", f"data.root={tmp_path / 'd'}")
    assert data.sizes == {"train": 50, "val": 10, "test": 20}  # val (1 in 10 per class) carved from train; the official test split kept
    x, y = _all(data.test)
    assert torch.equal(_unnormalise(x, data.info), torch.from_numpy(written["test"][0]))
    assert torch.equal(y, torch.from_numpy(written["test"][1]))
    assert data.info.in_channels == 1 and data.info.num_classes == 10


@pytest.mark.parametrize("name,writer,num_classes", [("cifar10", disk.write_cifar10, 10),
                                                     ("cifar100", disk.write_cifar100, 100),
                                                     ("svhn", disk.write_svhn, 10),
                                                     ("stl10", disk.write_stl10, 10)])
def test_colour_sets_read_their_formats(make_cfg, tmp_path, name, writer, num_classes):
    written = writer(tmp_path / "d")
    extra = ["data.input_size=[96,96]"] if name == "stl10" else []
    data = _build(make_cfg, f"data={name}", f"data.root={tmp_path / 'd'}", "data.split.val=0.2", *extra)
    x, y = _all(data.test)
    # pixel-exact round trip: channel order, orientation (SVHN/STL-10 store other layouts) and labels
    assert torch.equal(_unnormalise(x, data.info), torch.from_numpy(written["test"][0]))
    assert torch.equal(y, torch.from_numpy(written["test"][1]))
    assert data.info.num_classes == num_classes
    n_train = len(written["train"][1])
    assert data.sizes["train"] + data.sizes["val"] == n_train


def test_missing_files_say_where_and_how(make_cfg, tmp_path):
    with pytest.raises(ConfigError, match="data.download=true") as err:
        _build(make_cfg, "data=cifar10", f"data.root={tmp_path / 'nowhere'}")
    message = str(err.value)
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py" / "data_batch_1") in message
    assert "data.download=true" in message and "cifar-10-python.tar.gz" in message


def test_truncated_idx_file_is_named(make_cfg, tmp_path):
    disk.write_mnist_like(tmp_path / "d")
    images = tmp_path / "d" / "MNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(ConfigError, match="train-images-idx3-ubyte.*truncated"):
        _build(make_cfg, "data=mnist", f"data.root={tmp_path / 'd'}")


class _Boom:
    def __reduce__(self):
        import os

        return (os.system, ("touch pwned_by_pickle",))


def test_crafted_cifar_pickle_runs_nothing(make_cfg, tmp_path, monkeypatch):
    disk.write_cifar10(tmp_path / "d")
    with open(tmp_path / "d" / "cifar-10-batches-py" / "data_batch_1", "wb") as f:
        pickle.dump({"data": _Boom(), "labels": [0]}, f)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="data_batch_1.*refusing to load (posix|os).system"):
        _build(make_cfg, "data=cifar10", f"data.root={tmp_path / 'd'}")
    assert not (tmp_path / "pwned_by_pickle").exists()


def test_digits_ship_with_scikit_learn(make_cfg):
    data = _build(make_cfg, "data=digits", "data.input_size=[8,8]")
    assert sum(data.sizes.values()) == 1797
    x, y = _all(data.train)
    assert x.shape[1:] == (1, 8, 8) and set(y.tolist()) == set(range(10))


def test_fake_data_is_seeded(make_cfg):
    a = _all(_build(make_cfg, "data=fake", "data.num_samples=60").test)
    b = _all(_build(make_cfg, "data=fake", "data.num_samples=60").test)
    assert a[0].shape[1:] == (3, 32, 32) and torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.integration  # starts processes: a training's data loader workers or a command
def test_training_runs_end_to_end_on_tiny_mnist(make_cfg, tmp_path, caplog):
    import logging

    from cnnlab.run.lifecycle import train

    caplog.set_level(logging.INFO)
    disk.write_mnist_like(tmp_path / "d", n_train=100, n_test=30)
    metrics = train(make_cfg("data=mnist", f"data.root={tmp_path / 'd'}", "data.batch_size=16"), overrides=[])
    assert np.isfinite(metrics["test/loss"]) and (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    assert "data mnist: 90 train / 10 val / 30 test images (in memory), tensor loader" in caplog.text


def test_cli_trains_on_tiny_cifar10_found_through_cnnlab_data(run_cli, tmp_path, monkeypatch):
    disk.write_cifar10(tmp_path / "d")
    monkeypatch.setenv("CNNLAB_DATA", str(tmp_path / "d"))  # data.root defaults to ${paths.data_root}
    result = run_cli("train", "data=cifar10", "model=resnet20", "augment=basic", "augment/mix=cutmix",
                     "trainer.max_epochs=1", "trainer.progress=none", f"hydra.run.dir={tmp_path / 'run'}",
                     "data.batch_size=16", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "data cifar10: 90 train / 10 val / 20 test images (in memory), tensor loader" in result.stdout
    assert (tmp_path / "run" / "metrics.json").is_file()
