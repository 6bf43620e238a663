"""Saved configs of earlier versions: config.migrate's steps, and a checkpoint of the last unversioned release
(tests/fixtures/run_v0) evaluated, predicted, exported, explained and resumed by the current code."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from cnnlab.config.migrate import (CONFIG_VERSION, CONFIG_VERSION_KEY, STEPS, V1_ADDITIONS, V2_ADDITIONS,
                                   V3_ADDITIONS, add_missing, checkpoint_config, migrate)
from cnnlab.engine.checkpoint import config_hash, find_checkpoint, load_checkpoint
from cnnlab.errors import ConfigError
from cnnlab.run.restore import saved_run_config

FIXTURE = Path(__file__).parent / "fixtures" / "run_v0"


def _v0_config() -> dict:
    return copy.deepcopy(torch.load(FIXTURE / "checkpoints" / "last.ckpt", weights_only=True)["config"])


def _remove(config: dict, key: str) -> None:
    *parents, last = key.split(".")
    node = config
    for part in parents:
        node = node[part]
    node.pop(last, None)


def _older(config: dict) -> dict:
    """The fixture's config as the oldest readable release wrote it: none of the keys added since."""
    config = copy.deepcopy(config)
    for _commit, _what, keys, _sources in V1_ADDITIONS:
        for key in keys:
            _remove(config, key)
    return config


@pytest.fixture
def v0_run(tmp_path) -> Path:
    run = tmp_path / "run_v0"
    shutil.copytree(FIXTURE, run)
    return run


# ---- migrate() ----
def test_the_fixture_is_an_unversioned_checkpoint():
    ckpt = load_checkpoint(FIXTURE / "checkpoints" / "last.ckpt")
    assert CONFIG_VERSION_KEY not in ckpt and ckpt["config"]["model"]["name"] == "lenet5"


def test_steps_are_numbered_one_to_the_current_version():
    assert sorted(STEPS) == list(range(1, CONFIG_VERSION + 1))


@pytest.mark.parametrize("addition", V1_ADDITIONS, ids=[a[0] for a in V1_ADDITIONS])
def test_each_v1_addition_adds_its_keys_with_the_old_behaviour_and_keeps_set_ones(addition):
    _commit, _what, keys, sources = addition
    config = _v0_config()
    if sources:
        config["data"]["name"] = sources[0]
    for key in keys:
        _remove(config, key)
    migrated = migrate(config, 0)
    for key, value in keys.items():
        node = migrated
        for part in key.split("."):
            node = node[part]
        assert node == value
    for key in keys:  # keys already there keep their values
        _remove(migrated, key)
        add_missing(migrated, key, "set before")
    assert migrate(migrated, 0) == migrated


def test_the_data_cache_keys_are_added_for_image_folders_only():
    config = _older(_v0_config())
    assert "cache" not in migrate(config)["data"]
    config["data"]["name"] = "imagefolder"
    assert migrate(config)["data"]["cache"] is True and migrate(config)["data"]["cache_dir"] is None


def test_an_old_config_migrates_to_what_the_release_before_versions_wrote():
    current = _v0_config()
    assert migrate(_older(current), 0) == migrate(current, 0)
    v1 = migrate(current, 0)
    del v1["logger"]["mlflow"]
    del v1["trainer"]["bn_recalibrate"]
    assert v1 == current  # the fixture is what version 1 wrote: versions 2 and 3 add only these keys


def test_a_version_1_config_gains_mlflow_off_and_keeps_its_tensorboard_keys():
    v1 = _v0_config()
    assert "mlflow" not in v1["logger"]
    migrated = migrate(v1, 1)
    assert migrated["logger"]["mlflow"] == V2_ADDITIONS["logger.mlflow"]
    assert migrated["logger"]["mlflow"]["enabled"] is False
    assert {k: v for k, v in migrated["logger"].items() if k != "mlflow"} == v1["logger"]
    partly = copy.deepcopy(v1)  # a section with some of its keys keeps them and gains the others
    partly["logger"]["mlflow"] = {"enabled": True, "experiment": "mine"}
    section = migrate(partly, 1)["logger"]["mlflow"]
    assert section == {**V2_ADDITIONS["logger.mlflow"], "enabled": True, "experiment": "mine"}
    assert migrate(migrated, 1) == migrated


def test_a_version_2_config_gains_bn_recalibrate_off_and_keeps_a_set_one():
    v2 = migrate(_v0_config(), 0)
    del v2["trainer"]["bn_recalibrate"]
    assert migrate(v2, 2)["trainer"]["bn_recalibrate"] == V3_ADDITIONS["trainer.bn_recalibrate"] == 0
    assert migrate(v2, 2) == {**v2, "trainer": {**v2["trainer"], "bn_recalibrate": 0}}
    v2["trainer"]["bn_recalibrate"] = 8
    assert migrate(v2, 2)["trainer"]["bn_recalibrate"] == 8


def test_migrate_is_idempotent_and_leaves_its_input_alone():
    old = _older(_v0_config())
    before = copy.deepcopy(old)
    once = migrate(old, 0)
    assert old == before
    assert migrate(once, 0) == once
    assert migrate(once, CONFIG_VERSION) == once


def test_add_missing_leaves_an_absent_or_odd_parent_to_validation():
    config = {"trainer": "oops"}
    add_missing(config, "trainer.tf32", True)
    add_missing(config, "logger.projector", False)
    assert config == {"trainer": "oops"}


@pytest.mark.parametrize("version", [CONFIG_VERSION + 1, 99])
def test_a_newer_config_is_refused_in_one_line(version):
    with pytest.raises(ConfigError, match="is newer than this cnnlab reads") as refused:
        checkpoint_config({"config": _v0_config(), CONFIG_VERSION_KEY: version}, "checkpoint x.ckpt")
    message = str(refused.value)
    assert "\n" not in message
    assert message == (f"checkpoint x.ckpt: config version {version} is newer than this cnnlab reads (up to "
                       f"{CONFIG_VERSION}); upgrade cnnlab to use it")


@pytest.mark.parametrize("version", [-1, "1", 1.0, True, None])
def test_a_version_that_is_no_integer_is_refused(version):
    with pytest.raises(ConfigError, match="is no config version"):
        migrate(_v0_config(), version)


def test_a_newer_checkpoint_is_refused_by_every_command_that_restores_it(v0_run, make_cfg):
    path = v0_run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(path, weights_only=True)
    ckpt[CONFIG_VERSION_KEY] = CONFIG_VERSION + 1
    torch.save(ckpt, path)
    with pytest.raises(ConfigError, match=f"the config saved in {path}: config version {CONFIG_VERSION + 1} is "
                                          f"newer"):
        saved_run_config(None, load_checkpoint(path), path)


# ---- the v0 fixture with the current code ----
def test_an_unversioned_checkpoint_evaluates(v0_run, make_cfg):
    from cnnlab.cli.evaluate import evaluate

    overrides = [f"ckpt={v0_run}"]
    result = evaluate(make_cfg(*overrides, config_name="eval", run="eval"), overrides=overrides)
    assert result["epoch"] == 1 and result["images"] == 500 and 0 <= result["test/acc"] <= 1


def test_an_unversioned_checkpoint_of_the_oldest_keys_evaluates(v0_run, make_cfg):
    """A config without any key added since checkpoints carry their hash gets them from the migration."""
    from cnnlab.cli.evaluate import evaluate

    path = v0_run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"] = _older(ckpt["config"])
    ckpt["config_hash"] = config_hash(ckpt["config"])
    torch.save(ckpt, path)
    overrides = [f"ckpt={v0_run}"]
    result = evaluate(make_cfg(*overrides, config_name="eval", run="eval"), overrides=overrides)
    assert result["images"] == 500
    saved, merged, _ = saved_run_config(None, load_checkpoint(path), path)
    assert merged.trainer.ema.enabled is False and merged.data.sampler == "random"


@pytest.fixture
def digit(tmp_path) -> str:
    from cnnlab.data.sources import mnist_sample

    images, _ = mnist_sample(None)
    file = tmp_path / "digit.png"
    Image.fromarray(images[0, 0].numpy()).save(file)
    return str(file)


def test_an_unversioned_checkpoint_predicts(v0_run, digit):
    from cnnlab.cli.predict import predict

    [result] = predict(str(v0_run), [digit], topk=2, device="cpu")
    assert len(result["top"]) == 2 and result["top"][0]["label"] in [str(d) for d in range(10)]


def test_an_unversioned_checkpoint_exports(v0_run, tmp_path):
    from cnnlab.cli.export import export

    done = export(str(v0_run), "torchscript", str(tmp_path / "model.torchscript.pt"))
    assert (tmp_path / "model.torchscript.pt").is_file() and done


@pytest.mark.integration  # starts worker processes
def test_an_unversioned_checkpoint_is_explained(v0_run, digit, tmp_path):
    from cnnlab.cli.explain import explain

    explain(str(v0_run), images=[digit], n_images=1, out=str(tmp_path / "explain"), device="cpu")
    assert any((tmp_path / "explain").iterdir())


@pytest.mark.integration  # starts worker processes
def test_an_unversioned_checkpoint_resumes_one_more_epoch_and_writes_the_current_version(v0_run, make_cfg,
                                                                                        tmp_path):
    from cnnlab.run.lifecycle import train

    overrides = [f"trainer.resume={v0_run}", "trainer.max_epochs=2"]
    train(make_cfg(*overrides, run="resumed"), overrides=overrides)
    path, ckpt = find_checkpoint(tmp_path / "resumed", "ckpt", purpose="resume")
    assert ckpt["epoch"] == 2
    assert ckpt[CONFIG_VERSION_KEY] == CONFIG_VERSION
