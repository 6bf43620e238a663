"""Files from elsewhere (checkpoints and the configs saved in them, image folders) are data, never code: crafted
interpolations resolve nothing, a missing hash is refused, any unreadable file is passed over with one line."""

from __future__ import annotations

import logging
import os
import shutil

import pytest
import torch
from omegaconf import OmegaConf

from cnnlab.config.migrate import CONFIG_VERSION, CONFIG_VERSION_KEY
from cnnlab.engine.checkpoint import config_hash, find_checkpoint, load_checkpoint, saved_config
from cnnlab.errors import ConfigError
from cnnlab.cli.evaluate import evaluate
from cnnlab.run.weights import load_trained_model
from cnnlab.cli.predict import predict
from cnnlab.run.lifecycle import train


def _craft(trained_run, tmp_path, name: str, edit) -> str:
    """A copy of the shared run's last checkpoint with its config edited by `edit` and the hash recomputed,
    as an attacker who knows the format would write it."""
    run_dir, _ = trained_run
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    edit(ckpt["config"])
    ckpt["config_hash"] = config_hash(ckpt["config"])
    path = tmp_path / name
    torch.save(ckpt, path)
    return str(path)


def _file_handler_payload(target) -> str:
    return "${oc.create:'{_target_: logging.FileHandler, filename: " + str(target) + "}'}"


@pytest.mark.parametrize("resolver", ["oc.create", "oc.decode"])
def test_resume_resolves_no_interpolation_from_a_crafted_checkpoint(trained_run, make_cfg, tmp_path, resolver):
    created = tmp_path / "created_by_the_checkpoint"
    payload = _file_handler_payload(created)
    if resolver == "oc.decode":
        payload = "${oc.decode:'{_target_: logging.FileHandler, filename: " + str(created) + "}'}"
    # Nested where the optimizer's instantiation would build it; the trust check sees only a string there.
    path = _craft(trained_run, tmp_path, "crafted.ckpt", lambda c: c["optimizer"].__setitem__("betas", payload))
    overrides = [f"trainer.resume={path}"]
    with pytest.raises(ConfigError, match=r"optimizer\.betas=\"\$\{oc\.(create|decode):.* must be \[beta1, beta2\]"):
        train(make_cfg(*overrides, run="again"), overrides=overrides)
    assert not created.exists()


def test_a_crafted_target_inside_an_interpolation_never_passes_the_trust_check(trained_run, make_cfg, tmp_path):
    created = tmp_path / "created_by_the_checkpoint"
    path = _craft(trained_run, tmp_path, "crafted.ckpt",
                  lambda c: c["optimizer"].__setitem__("_target_", "${oc.select:nowhere,logging.FileHandler}"))
    overrides = [f"trainer.resume={path}"]
    with pytest.raises(ConfigError, match=r"optimizer._target_=.*oc.select.* is not trusted"):
        train(make_cfg(*overrides, run="again"), overrides=overrides)
    assert not created.exists()


def test_environment_values_are_never_copied_into_a_resumed_run(trained_run, make_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_TEST_SECRET", "s3cret-value")
    path = _craft(trained_run, tmp_path, "crafted.ckpt",
                  lambda c: c.__setitem__("task_name", "${oc.env:CNNLAB_TEST_SECRET}"))
    overrides = [f"trainer.resume={path}"]
    train(make_cfg(*overrides, run="again"), overrides=overrides)  # nothing left to train: tests and records
    written = (tmp_path / "again" / "config_resolved.yaml").read_text()
    assert "s3cret-value" not in written
    assert "${oc.env:CNNLAB_TEST_SECRET}" in written  # kept as the literal text it is
    assert "s3cret-value" not in (tmp_path / "again" / "metrics.json").read_text()


def test_eval_and_predict_resolve_nothing_from_the_saved_config(trained_run, make_cfg, tmp_path, monkeypatch):
    """A resolver with a side effect, planted in the saved config, is never called by eval or predict: the value
    stays the text it is, and is refused as a mean."""
    made = tmp_path / "made_by_a_resolver"
    OmegaConf.register_new_resolver("test_mkdir", lambda p: os.mkdir(p) or p, replace=True)
    path = _craft(trained_run, tmp_path, "crafted.ckpt",
                  lambda c: c["data"].__setitem__("mean", "${test_mkdir:" + str(made) + "}"))
    with pytest.raises(ConfigError, match="data.mean"):
        overrides = [f"ckpt={path}"]
        evaluate(make_cfg(*overrides, config_name="eval", run="eval"), overrides=overrides)
    with pytest.raises(ConfigError, match="data.mean"):
        predict(path, [str(trained_run[0] / "model_summary.txt")])
    assert not made.exists()


def test_classes_named_in_a_saved_config_are_never_imported_unless_trusted(trained_run, make_cfg, tmp_path,
                                                                          monkeypatch):
    """A crafted optimizer, scheduler or transform naming an installed module: eval and predict, which build
    none of them, evaluate and classify with the model and never import the module; resume, which builds them,
    refuses them as untrusted before importing anything."""
    marker = tmp_path / "imported"
    (tmp_path / "planted.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass Anything:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # importable, as any installed module is

    def plant(config):
        config["optimizer"]["_target_"] = "planted.Anything"
        config["scheduler"]["_target_"] = "planted.Anything"
        config["augment"]["transforms"] = [{"_target_": "planted.Anything"}]

    path = _craft(trained_run, tmp_path, "crafted.ckpt", plant)
    overrides = [f"ckpt={path}"]
    assert evaluate(make_cfg(*overrides, config_name="eval", run="eval"), overrides=overrides)["images"] > 0
    overrides = [f"trainer.resume={path}"]
    with pytest.raises(ConfigError, match=r"_target_='planted.Anything' in the config saved in .* is not trusted"):
        train(make_cfg(*overrides, run="again"), overrides=overrides)
    image = tmp_path / "digit.png"
    from PIL import Image
    Image.new("L", (8, 8), 200).save(image)
    assert predict(path, [str(image)], device="cpu")[0]["top"]
    assert not marker.exists(), "a module named in the checkpoint was imported"


def test_a_saved_literal_dollar_brace_round_trips_unchanged(tmp_path):
    """A value that really is the text '${...}' (escaped in the user's YAML) comes back as that text."""
    ckpt = {"config": {"model": {"name": "mlp"}, "note": "cost ${x} \\${y} \\\\${z}", "items": ["${a}", 3]},
            CONFIG_VERSION_KEY: CONFIG_VERSION}  # a current config: the migration adds no key
    cfg = saved_config(ckpt)
    assert OmegaConf.to_container(cfg, resolve=True) == ckpt["config"]
    again = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))  # as apply_overrides copies it
    assert OmegaConf.to_container(again, resolve=True) == ckpt["config"]


def test_a_checkpoint_without_its_config_hash_is_refused(trained_run, tmp_path):
    run_dir, _ = trained_run
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    del ckpt["config_hash"]
    ckpt["config"]["optimizer"]["lr"] = 10.0
    torch.save(ckpt, tmp_path / "nohash.ckpt")
    with pytest.raises(ConfigError, match="nohash.ckpt: the checkpoint has no config_hash"):
        load_checkpoint(tmp_path / "nohash.ckpt")


@pytest.mark.parametrize("config,model,message", [
    ("lenet5", None, r"its config \(str\) is not a mapping"),
    (None, None, r"its config \(NoneType\) is not a mapping"),
    ({"model": None}, None, r"its config \(model: None\) is not a mapping"),
    ("ok", "weights", r"its model weights are str, not a mapping"),
])
def test_a_checkpoint_of_the_wrong_shape_is_one_clear_error(trained_run, tmp_path, config, model, message):
    run_dir, _ = trained_run
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    if config != "ok":
        ckpt["config"] = config
    if model is not None:
        ckpt["model"] = model
    ckpt["config_hash"] = config_hash(ckpt["config"])
    torch.save(ckpt, tmp_path / "odd.ckpt")
    with pytest.raises(ConfigError, match=message):
        load_trained_model(tmp_path / "odd.ckpt", torch.device("cpu"))


@pytest.mark.parametrize("content", [b"", b"\x80", b"PK\x03\x04 torn zip"], ids=["empty", "one-byte", "torn-zip"])
def test_any_unreadable_checkpoint_is_passed_over_with_a_one_line_reason(trained_run, tmp_path, content, caplog):
    run_dir, _ = trained_run
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    shutil.copy(run_dir / "checkpoints" / "best.ckpt", folder / "best.ckpt")
    (folder / "last.ckpt").write_bytes(content)
    caplog.set_level(logging.WARNING)
    path, ckpt = find_checkpoint(tmp_path, "trainer.resume", purpose="resume")
    assert path.name == "best.ckpt" and "model" in ckpt
    skipped = [r.getMessage() for r in caplog.records if "passing over" in r.getMessage()]
    assert len(skipped) == 1 and skipped[0].startswith("passing over unreadable checkpoint last.ckpt (")
    assert "\n" not in skipped[0] and "weights_only" not in skipped[0]


def test_an_empty_last_checkpoint_falls_back_to_best_on_resume(trained_run, make_cfg, tmp_path, caplog):
    run_dir, _ = trained_run
    old = tmp_path / "old"
    shutil.copytree(run_dir, old)
    (old / "checkpoints" / "last.ckpt").unlink()  # a separate, empty file (not the hard link to best)
    (old / "checkpoints" / "last.ckpt").write_bytes(b"")
    caplog.set_level(logging.INFO)
    overrides = [f"trainer.resume={old}"]
    metrics = train(make_cfg(*overrides, run="again"), overrides=overrides)
    assert "passing over unreadable checkpoint last.ckpt" in caplog.text and "empty or cut short" in caplog.text
    assert metrics["epochs_completed"] == 3


def test_an_unsafe_pickle_never_suggests_weights_only_false(tmp_path):
    import pickle

    class Exploit:
        def __reduce__(self):
            return (os.system, ("true",))

    bad = tmp_path / "evil.ckpt"
    torch.save({"model": Exploit(), "config": {}}, bad, pickle_module=pickle)
    with pytest.raises(ConfigError, match="refused: loading them could run code") as err:
        load_checkpoint(bad)
    assert "weights_only" not in str(err.value) and "\n" not in str(err.value)
    assert "refused: loading them could run code" in str(err.value)


@pytest.mark.parametrize("entry_point", ["eval", "predict", "finetune"])
def test_an_empty_checkpoint_is_one_error_line_in_every_command(make_cfg, tmp_path, entry_point):
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(ConfigError, match=r"empty.ckpt is not a readable cnnlab checkpoint: the file is empty"):
        if entry_point == "eval":
            evaluate(make_cfg(f"ckpt={empty}", config_name="eval", run="e"), overrides=[f"ckpt={empty}"])
        elif entry_point == "predict":
            predict(str(empty), [str(empty)])
        else:
            overrides = [f"finetune.checkpoint={empty}"]
            train(make_cfg(*overrides), overrides=overrides)
