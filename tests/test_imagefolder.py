"""The user's own image folders: classes from folder names, grayscale/RGB, separate roots, both loading modes,
and the errors a user meets with a badly laid-out or damaged folder."""

from __future__ import annotations

import pytest
import torch
from cnnlab.data import build_data
from cnnlab.errors import ConfigError
from cnnlab.config.typed import data_section

import disk_formats as disk

CPU = torch.device("cpu")
SMALL = ["data=imagefolder", "data.input_size=[16,16]", "data.batch_size=8", "data.num_workers=0"]


def _build(make_cfg, *overrides, augment=None):
    cfg = make_cfg(*SMALL, *overrides)
    return build_data(data_section(cfg.data), int(cfg.seed), CPU, augment)


def _all(loader):
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


def test_classes_come_from_folder_names_and_stats_are_measured(make_cfg, tmp_path):
    disk.write_image_folder(tmp_path / "imgs", classes=("zebra", "ant", "moth"), per_class=10)
    data = _build(make_cfg, f"data.root={tmp_path / 'imgs'}")
    assert data.info.classes == ("ant", "moth", "zebra")  # sorted, as torchvision's ImageFolder does
    assert data.found["classes"] == ["ant", "moth", "zebra"] and len(data.found["mean"]) == 3
    assert data.sizes == {"train": 24, "val": 3, "test": 3}
    assert data.loader_kind == "tensor"  # 30 small images fit in memory: the fast path applies
    x, _ = _all(data.train)
    assert x.shape[1:] == (3, 16, 16)
    # normalised with the measured statistics: roughly zero mean, unit spread per channel
    assert x.mean().abs() < 0.3 and 0.7 < x.std() < 1.3


def test_grayscale_decoding_and_separate_roots(make_cfg, tmp_path):
    disk.write_image_folder(tmp_path / "train", per_class=6)
    disk.write_image_folder(tmp_path / "val", per_class=2, seed=1)
    disk.write_image_folder(tmp_path / "test", classes=("cat", "fox"), per_class=3, seed=2)  # a class may be missing
    data = _build(make_cfg, "data.root=null", f"data.train_root={tmp_path / 'train'}",
                  f"data.val_root={tmp_path / 'val'}", f"data.test_root={tmp_path / 'test'}", "data.in_channels=1")
    assert data.sizes == {"train": 18, "val": 6, "test": 6}
    x, y = _all(data.test)
    assert x.shape[1:] == (1, 16, 16)
    assert sorted(set(y.tolist())) == [0, 2]  # cat=0, fox=2 in the training tree's class list


def test_per_sample_decoding_matches_the_in_memory_set(make_cfg, tmp_path):
    disk.write_image_folder(tmp_path / "imgs", per_class=6)
    common = [f"data.root={tmp_path / 'imgs'}", "data.mean=[0.5,0.5,0.5]", "data.std=[0.25,0.25,0.25]"]
    resident = _build(make_cfg, *common)
    lazy = _build(make_cfg, *common, "data.in_memory=false")
    assert resident.loader_kind == "tensor" and lazy.loader_kind == "dataloader"
    for split in ("val", "test"):
        a, b = _all(resident.split(split)), _all(lazy.split(split))
        assert torch.equal(a[1], b[1]) and torch.allclose(a[0], b[0])


def test_a_run_trains_on_an_image_folder_and_saves_its_classes(make_cfg, tmp_path):
    from cnnlab.run.lifecycle import train

    files = disk.write_image_folder(tmp_path / "imgs", per_class=12)
    cfg = make_cfg(*SMALL, f"data.root={tmp_path / 'imgs'}", "model=convnet", "augment=basic",
                   "trainer.max_epochs=3")
    metrics = train(cfg, overrides=[])
    assert metrics["test/acc"] > 0.5  # three clearly different mean colours
    from omegaconf import OmegaConf

    saved = OmegaConf.load(tmp_path / "run" / "config_resolved.yaml")
    assert list(saved.data.classes) == ["cat", "dog", "fox"] and saved.data.num_classes == 3
    assert len(saved.data.mean) == 3
    # predict prepares a file as training did and names classes by their folders
    from cnnlab.cli.predict import predict

    picks = [files[name][-1] for name in ("cat", "dog", "fox")]
    labels = [r["top"][0]["label"] for r in predict(str(tmp_path / "run"), [str(p) for p in picks], device="cpu")]
    assert sum(label == name for label, name in zip(labels, ("cat", "dog", "fox"))) >= 2


def test_missing_root(make_cfg, tmp_path):
    with pytest.raises(ConfigError, match=f"data.root={tmp_path / 'absent'} is not a folder"):
        _build(make_cfg, f"data.root={tmp_path / 'absent'}")


def test_empty_folder(make_cfg, tmp_path):
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    (tmp_path / "imgs" / "b").mkdir(parents=True)
    with pytest.raises(ConfigError, match="holds no image files"):
        _build(make_cfg, f"data.root={tmp_path / 'imgs'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="has no class sub-folders"):
        _build(make_cfg, f"data.root={tmp_path / 'empty'}")


def test_single_class_folder(make_cfg, tmp_path):
    disk.write_image_folder(tmp_path / "imgs", classes=("only",), per_class=4)
    with pytest.raises(ConfigError, match="single class folder \\(only\\).*at least two"):
        _build(make_cfg, f"data.root={tmp_path / 'imgs'}")


def test_extra_class_in_val_root(make_cfg, tmp_path):
    disk.write_image_folder(tmp_path / "train", classes=("a", "b"), per_class=4)
    disk.write_image_folder(tmp_path / "val", classes=("a", "b", "c"), per_class=2)
    with pytest.raises(ConfigError, match="data.val_root=.* has class folder\\(s\\) c that the training folder"):
        _build(make_cfg, "data.root=null", f"data.train_root={tmp_path / 'train'}", f"data.val_root={tmp_path / 'val'}")


@pytest.mark.parametrize("in_memory", ["true", "false"])
def test_corrupt_image_is_named_or_skipped_and_counted(make_cfg, tmp_path, in_memory):
    files = disk.write_image_folder(tmp_path / "imgs", per_class=10)
    broken = files["dog"][0]
    broken.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    if in_memory == "true":
        with pytest.raises(ConfigError, match=f"cannot read image {broken}.*data.skip_unreadable=true"):
            _build(make_cfg, f"data.root={tmp_path / 'imgs'}", "data.in_memory=true")
        data = _build(make_cfg, f"data.root={tmp_path / 'imgs'}", "data.in_memory=true", "data.skip_unreadable=true")
        assert data.skipped == 1 and sum(data.sizes.values()) == 29
    else:
        # decoded per sample: the broken file is met mid-epoch; with skip on, it is dropped from its batch and counted
        data = _build(make_cfg, f"data.root={tmp_path / 'imgs'}", "data.in_memory=false", "data.skip_unreadable=true",
                      "data.mean=[0.5,0.5,0.5]",
                      "data.std=[0.25,0.25,0.25]")
        seen = sum(len(y) for _, y in data.train) + sum(len(y) for _, y in data.val) + sum(len(y) for _, y in data.test)
        loaders = (data.train, data.val, data.test)
        assert seen == 29 and sum(loader.skipped for loader in loaders if hasattr(loader, "skipped")) == 1


def test_class_folders_whose_names_are_not_utf8_train_test_and_record(make_cfg, tmp_path):
    """A folder name with bytes that are not UTF-8 (a Latin-1 'café') is written as caf\\xe9 in every output:
    the whole run, its test pass, TensorBoard text, metrics.json and config_resolved.yaml; eval and predict
    find the folder again."""
    import json
    import os

    from cnnlab.cli.evaluate import evaluate
    from cnnlab.cli.predict import predict
    from cnnlab.run.lifecycle import train

    latin1 = os.fsdecode(b"caf\xe9")
    files = disk.write_image_folder(tmp_path / "imgs", classes=("bar", latin1, "tea"), per_class=12)
    cfg = make_cfg(*SMALL, f"data.root={tmp_path / 'imgs'}", "model=convnet", "trainer.max_epochs=2")
    metrics = train(cfg, overrides=[])
    assert set(metrics["test/per_class_acc"]) == {"bar", "caf\\xe9", "tea"}
    assert "caf\\xe9" in json.loads((tmp_path / "run" / "metrics.json").read_text())["test/per_class_acc"]
    assert "caf\\xe9" in (tmp_path / "run" / "config_resolved.yaml").read_text()
    overrides = [f"ckpt={tmp_path / 'run'}"]
    result = evaluate(make_cfg(*overrides, config_name="eval", run="eval"), overrides=overrides)
    assert result["images"] == sum(map(sum, metrics["test/confusion_matrix"]))
    labels = {r["top"][0]["label"] for r in predict(str(tmp_path / "run"), [str(files[latin1][0])], topk=3,
                                                    device="cpu")}
    assert labels <= {"bar", "caf\\xe9", "tea"}
