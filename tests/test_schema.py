"""The config schema (cnnlab.config.schema) is the one place a key's type, choices and range are declared: every
preset validates against it, and it refuses what it declares."""

from __future__ import annotations

import os
import signal
import time
import typing
from pathlib import Path

import pytest
from omegaconf import OmegaConf, open_dict

from cnnlab.config import fields
from cnnlab.config.compose import compose_config, config_dir
from cnnlab.errors import ConfigError
from cnnlab.config.checks import config_problems
from cnnlab.config.messages import _ctrl_c_deferred, closest
from cnnlab.config.migrate import V1_ADDITIONS, migrate
from cnnlab.models import model_config_problems
from cnnlab.run.validate import validate

CONFIGS = Path(config_dir())
GROUPS = ("data", "model", "augment", "augment/mix", "optimizer", "scheduler", "trainer", "logger", "paths")
# What a preset needs from the user before it can run (the value `???` in its file).
NEEDS = {("data", "imagefolder"): ["data.root=/tmp/images"], ("data", "webdataset"): ["data.train_shards=/tmp/x.tar"],
         ("model", "hub"): ["model.repo=pytorch/vision:v0.10.0", "model.entry=mobilenet_v2", "model.trust_repo=true"]}


def _options():
    for group in GROUPS:
        for path in sorted((CONFIGS / group).glob("*.yaml")):
            yield group, path.stem


OPTIONS = list(_options())


def test_the_presets_are_all_found():
    groups = {g for g, _ in OPTIONS}
    assert groups == set(GROUPS) and len(OPTIONS) >= 60


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_preset_validates_against_the_schema_and_an_unknown_key_in_it_is_refused(tmp_path, group, option):
    overrides = [f"{group}={option}", *NEEDS.get((group, option), [])]
    validate(compose_config(overrides, tmp_path))
    package = group.replace("/", ".")
    with pytest.raises(ConfigError, match=rf"{package}.zz_not_a_key"):
        validate(compose_config([*overrides, f"+{package}.zz_not_a_key=1"], tmp_path))


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml")))
def test_every_experiment_validates(tmp_path, experiment):
    validate(compose_config([f"experiment={experiment}"], tmp_path))


def test_eval_and_summary_configs_validate_with_their_own_keys(tmp_path):
    assert config_problems(compose_config(["ckpt=/tmp/run"], tmp_path, "eval"), "eval") == []
    assert config_problems(compose_config([], tmp_path, "summary"), "summary") == []
    problems = config_problems(compose_config(["ckpt=/tmp/run", "split=holdout"], tmp_path, "eval"), "eval")
    assert problems == ["split='holdout' is not accepted; choose one of train, val, test"]
    problems = config_problems(compose_config(["format=yaml"], tmp_path, "summary"), "summary")
    assert problems == ["format='yaml' is not accepted; choose one of table, json"]


def test_every_problem_is_reported_at_once_each_naming_its_key(tmp_path):
    cfg = compose_config(["seed=abc", "trainer.grad_clip=nan", "+trainer.max_epoch=3", "data.loader=gpu",
                          "optimizer.lr=inf"], tmp_path)
    problems = config_problems(cfg)
    assert sorted(p.split("=")[0].split(" ")[0] for p in problems) == [
        "data.loader", "optimizer.lr", "seed", "trainer.grad_clip", "trainer.max_epoch"]


def test_a_config_saved_before_newer_keys_existed_validates_once_migrated(tmp_path):
    """A version-0 config without the keys that appeared since (trainer.summary, paths.existing_run, the averages,
    the decoded cache, ...) is refused as it is and validates once migrate() has added them: the schema requires
    every key, and the migration is where an old file gains them."""
    cfg = OmegaConf.to_container(compose_config(["data=imagefolder", "data.root=/data/photos"], tmp_path))
    for _commit, _what, keys, _sources in V1_ADDITIONS:
        for key in keys:
            *parents, last = key.split(".")
            node = cfg
            for part in parents:
                node = node[part]
            del node[last]
    assert "trainer.summary is missing" in config_problems(cfg)
    assert "paths.existing_run is missing" in config_problems(cfg)
    assert "data.cache is missing" in config_problems(cfg)
    assert config_problems(migrate(cfg, 0)) == []


def test_a_version_1_config_without_mlflow_validates_once_migrated(tmp_path):
    cfg = OmegaConf.to_container(compose_config([], tmp_path))
    del cfg["logger"]["mlflow"]
    assert config_problems(cfg) == ["logger.mlflow is missing"]
    assert config_problems(migrate(cfg, 1)) == []


@pytest.mark.parametrize("option,tensorboard,mlflow", [
    ("tensorboard", True, False), ("mlflow", False, True), ("[tensorboard,mlflow]", True, True),
    ("[mlflow,tensorboard]", True, True), ("none", False, False), ("[]", False, False)])
def test_logger_options_merge_as_a_list(tmp_path, option, tensorboard, mlflow):
    """logger= picks any of the options: each turns its own part on over configs/base/logger.yaml (all off),
    whatever the order; TensorBoard's keys keep their options' values."""
    cfg = compose_config([f"logger={option}"], tmp_path)
    assert config_problems(cfg) == []
    assert cfg.logger.enabled is tensorboard and cfg.logger.mlflow.enabled is mlflow
    assert cfg.logger.histogram_every_n_epochs == (10 if tensorboard else 0)


def test_a_missing_key_is_named(tmp_path):
    cfg = compose_config([], tmp_path)
    with open_dict(cfg):
        del cfg.trainer["max_epochs"]
    assert config_problems(cfg) == ["trainer.max_epochs is missing"]


def test_precision_given_as_a_number_is_the_choice_32(tmp_path):
    """Hydra reads trainer.precision=32 as the int 32; the choice is the text "32"."""
    assert config_problems(compose_config(["trainer.precision=32"], tmp_path)) == []
    assert config_problems(compose_config(["trainer.precision=16"], tmp_path)) == [
        "trainer.precision=16 is not accepted; choose one of auto, 32, bf16, fp16"]


def test_inf_and_nan_are_refused_in_model_and_optimizer_arguments_the_schema_does_not_type(tmp_path):
    cfg = compose_config(["model=mlp", "model.dropout=inf", "+optimizer.foreach=true",
                          "+optimizer.maximize=false"], tmp_path)
    assert config_problems(cfg) == []  # the model section is the zoo's to check
    assert model_config_problems(cfg.model) == ["model.dropout=inf is not a finite number: it must be a number"]
    with pytest.raises(ConfigError, match=r"^model.dropout=inf is not a finite number: it must be a number$"):
        validate(cfg)


def test_closest_key_by_spelling_and_by_abbreviation():
    assert closest("max_epoch", ["max_epochs", "device"]) == "max_epochs"
    assert closest("learning_rate", ["lr", "momentum", "weight_decay"]) == "lr"
    assert closest("batchsize", ["batch_size", "eval_batch_size"]) == "batch_size"
    assert closest("zzz", ["lr", "momentum"]) is None


def test_choice_lists_are_declared_once_in_the_schema():
    """The modules that act on a choice hold no list of their own (the schema's Literal is the list)."""
    src = Path(__file__).resolve().parents[1] / "src" / "cnnlab"
    declared = {name: typing.get_args(getattr(fields, name)) for name in
                ("Progress", "MonitorMode", "PrecisionName", "Loss", "NonFinite", "Interval", "ResizeMode",
                 "LoaderKind", "ExistingRun", "SummaryMode")}
    for path in src.rglob("*.py"):
        if path.name == "fields.py":
            continue
        text = path.read_text()
        for name, choices in declared.items():
            spelled = "(" + ", ".join(f'"{c}"' for c in choices) + ")"
            assert spelled not in text, f"{path.name} repeats the {name} choices {spelled}"


def test_eval_refuses_an_unknown_split_before_reading_the_checkpoint(make_cfg):
    from cnnlab.cli.evaluate import evaluate

    with pytest.raises(ConfigError, match=r"^split='holdout' is not accepted; choose one of train, val, test$"):
        evaluate(make_cfg("ckpt=/nonexistent/run", "split=holdout", config_name="eval"), overrides=[])


def test_ctrl_c_while_the_schema_is_checked_waits_for_the_check_then_interrupts():
    # pydantic builds a deferred schema in Rust on first use; Ctrl-C inside that build came out as a
    # SchemaError traceback instead of the one-line "interrupted" report.
    reached_the_end = []
    with pytest.raises(KeyboardInterrupt, match="^$"):
        with _ctrl_c_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # a signal is handled between bytecodes: give it the chance to interrupt
            reached_the_end.append(True)
    assert reached_the_end == [True]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_the_model_section_is_checked_once_by_the_zoo_and_build_model_refuses_the_same(tmp_path):
    """models.model_config_problems is the one check of the model section: name, init, keys, the builder's types,
    NaN, the entry's rules; the validator reports what it finds, build_model refuses the same lines."""
    from cnnlab.models import build_model

    cfg = compose_config(["model=mlp", "model.dropout=high", "model.batch_norm=1"], tmp_path)
    expected = ["model.dropout='high' must be a number", "model.batch_norm=1 must be true or false"]
    assert model_config_problems(cfg.model) == expected
    with pytest.raises(ConfigError, match="model.dropout='high' must be a number") as refused:
        validate(cfg)
    assert refused.value.problems == expected
    with pytest.raises(ConfigError, match=r"model.dropout='high' must be a number"):
        build_model(cfg.model, 1, 10, (28, 28))
    unknown = compose_config(["model=mlp", "+model.widht=3", "+model.bad=nan"], tmp_path)
    assert model_config_problems(unknown.model) == [
        "model 'mlp' has no key(s) model.bad, model.widht; it accepts activation, batch_norm, dropout, hidden",
        "model.bad=nan must be a finite number"]


def test_config_does_not_import_the_zoo():
    import ast

    src = Path(__file__).resolve().parents[1] / "src" / "cnnlab" / "config"
    for path in src.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.startswith("cnnlab.models") for n in names), f"{path.name} imports the zoo"
