"""Inputs that would take a run somewhere the user never asked: a checkpoint's saved config that downloads,
opens files or trusts code; values too large for the machine; lists and ranges that are empty or inverted;
weights that are not numbers. Each is refused with one line before anything is built or written."""

from __future__ import annotations

import math
import os
import re

import pytest
import torch
from omegaconf import OmegaConf

from cnnlab.engine.checkpoint import config_hash, load_checkpoint
from cnnlab.errors import ConfigError
from cnnlab.cli.evaluate import evaluate
from cnnlab.run.lifecycle import train
from cnnlab.run.validate import validate


class Planted:
    """Anything but tensors in a torch file: torch.load(weights_only=True) refuses it with its advice."""


def _craft(trained_run, tmp_path, name: str, edit, weights=None) -> str:
    """A copy of the shared run's last checkpoint with its config (and weights) edited, the hash recomputed."""
    run_dir, _ = trained_run
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    edit(ckpt["config"])
    if weights is not None:
        weights(ckpt)
    ckpt["config_hash"] = config_hash(ckpt["config"])
    path = tmp_path / name
    torch.save(ckpt, path)
    return str(path)


def _refused(call, *fragments):
    with pytest.raises(ConfigError, match=re.escape(str(fragments[0]))) as info:
        call()
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)
    return str(info.value)


# ---- a saved config never downloads ----
@pytest.fixture
def downloads(monkeypatch):
    """Every download torchvision would be asked for (none may reach the network in a test)."""
    from cnnlab.data import torchvision_sets

    asked = []

    def record(name, root):
        asked.append((name, root))
        raise ConfigError(f"(test) download of {name} into {root}")

    monkeypatch.setattr(torchvision_sets, "download", record)
    return asked


def _downloading(planted):
    def edit(config):
        config["data"].update(name="mnist", root=str(planted), download=True)
    return edit


def test_a_saved_config_never_downloads_nor_creates_its_root(trained_run, make_cfg, tmp_path, downloads):
    planted = tmp_path / "planted" / "root"
    path = _craft(trained_run, tmp_path, "downloading.ckpt", _downloading(planted))
    _refused(lambda: evaluate(make_cfg(f"ckpt={path}", config_name="eval", run="eval"), overrides=[f"ckpt={path}"]),
             "files not found under data.root")
    resume = [f"trainer.resume={path}"]
    _refused(lambda: train(make_cfg(*resume, run="again"), overrides=resume), "files not found under data.root")
    assert downloads == [] and not planted.parent.exists()


def test_only_this_command_line_turns_a_download_on(trained_run, make_cfg, tmp_path, downloads):
    planted = tmp_path / "planted"
    path = _craft(trained_run, tmp_path, "downloading.ckpt", _downloading(planted))
    args = [f"ckpt={path}", "+data.download=true"]  # the root still comes from the file: not enough
    _refused(lambda: evaluate(make_cfg(*args, config_name="eval", run="eval"), overrides=args),
             "data.download=true", f"data.root={planted}", "the config saved in")
    assert downloads == [] and not planted.exists()
    mine = tmp_path / "mine"
    args = [f"ckpt={path}", "+data.download=true", f"+data.root={mine}"]
    _refused(lambda: evaluate(make_cfg(*args, config_name="eval", run="eval2"), overrides=args), "(test) download")
    assert downloads == [("mnist", mine)]


# ---- bounds the machine sets ----
def test_num_workers_is_bounded_by_the_machine(make_cfg):
    from cnnlab.run.validate import max_workers

    limit = max_workers()
    assert limit >= 4 * (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    _refused(lambda: validate(make_cfg("data.num_workers=100000")),
             "data.num_workers=100000", f"at most {limit}")
    validate(make_cfg(f"data.num_workers={limit}"))


def test_num_workers_cli_exits_2_before_the_run_dir(run_cli, tmp_path):
    done = run_cli("train", "data.num_workers=100000", f"paths.output_dir={tmp_path / 'run'}", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert (done.stdout + done.stderr).strip().splitlines()[-1].startswith("error: data.num_workers=100000")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override, key", [("data.input_size=[100000,100000]", "data.input_size"),
                                           ("data.input_size=[28,1000000]", "data.input_size")])
def test_a_huge_input_size_is_a_config_error(make_cfg, override, key):
    _refused(lambda: validate(make_cfg(override)), f"{key}=", "8192")


def test_a_huge_generated_image_size_is_a_config_error(make_cfg):
    _refused(lambda: validate(make_cfg("data=fake", "data.image_size=[100000,100000]")), "data.image_size=", "8192")


def test_a_batch_larger_than_the_machines_memory_is_a_config_error(make_cfg):
    # 4096 images of 3 x 8192 x 8192 floats: 3 TiB
    _refused(lambda: validate(make_cfg("data=fake", "data.in_channels=3", "data.mean=null", "data.std=null",
                                       "data.input_size=[8192,8192]", "data.batch_size=4096")),
             "data.batch_size=4096", "memory")


@pytest.mark.parametrize("resize", [[100000, 100000], 100000])
def test_a_huge_tta_resize_is_a_config_error(resize):
    from cnnlab.engine.tta import resolve_resize

    with pytest.raises(ConfigError, match=r"tta_resize=.*8192"):
        resolve_resize("ten_crop", resize, [28, 28])
    assert resolve_resize("ten_crop", 8192, [28, 28]) == [8192, 8192]


# ---- top-k against the number of classes ----
def test_topk_above_the_number_of_classes_is_refused(make_cfg, tmp_path):
    for args, classes in ((["data=digits", "trainer.topk=[1,11]"], "10 classes"),
                          (["data=digits", "data.class_subset=[0,1,2]", "trainer.topk=[1,5]"], "3 classes")):
        _refused(lambda: train(make_cfg(*args), overrides=args), "trainer.topk", classes)
        assert not (tmp_path / "run").exists()  # refused before the run dir is made


def test_topk_checked_once_an_image_folders_classes_are_known(make_cfg, tmp_path):
    from PIL import Image

    for name in ("a", "b", "c"):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for i in range(6):
            Image.new("L", (8, 8), 40 * i).save(tmp_path / "imgs" / name / f"{i}.png")
    args = ["data=imagefolder", f"data.root={tmp_path / 'imgs'}", "data.in_channels=1", "data.input_size=[8,8]",
            "model=mlp", "trainer.topk=[1,5]", "trainer.max_epochs=1", "logger=none", "data.mean=[0.5]",
            "data.std=[0.5]", "data.split.val=0.34"]
    _refused(lambda: train(make_cfg(*args), overrides=args), "trainer.topk", "5", "3 classes")
    assert not (tmp_path / "run" / "checkpoints").exists()
    # the preset's top-5 (not asked for on this command line) on 3 classes is left out, not reported as 1.0
    args.remove("trainer.topk=[1,5]")
    metrics = train(make_cfg(*args, "trainer.limit_train_batches=1", run="default"), overrides=args)
    assert "test/acc" in metrics and not any("top5" in key for key in metrics), sorted(metrics)


def test_eval_refuses_topk_above_the_runs_classes(trained_run, make_cfg):
    run_dir, _ = trained_run
    args = [f"ckpt={run_dir}", "trainer.topk=[1,11]"]
    _refused(lambda: evaluate(make_cfg(*args, config_name="eval", run="eval"), overrides=args),
             "trainer.topk", "10 classes")


# ---- empty lists say why ----
def test_an_empty_list_says_it_is_empty(make_cfg):
    message = _refused(lambda: validate(make_cfg("trainer.topk=[]")), "trainer.topk=[] is an empty list",
                       "at least one")
    assert len(message.splitlines()) == 1
    _refused(lambda: validate(make_cfg("data.class_subset=[]")), "data.class_subset=[] is an empty list")


def test_an_empty_search_choice_list_says_it_is_empty(make_cfg):
    cfg = make_cfg(config_name="tune")
    OmegaConf.update(cfg, "search.space", {"lr": {"key": "optimizer.lr", "type": "categorical", "choices": []}},
                     merge=False)
    _refused(lambda: validate(cfg, "tune"), "search.space.lr.choices=[] is an empty list")


# ---- [low, high] pairs in order ----
def test_an_inverted_lr_range_is_a_config_error(make_cfg):
    _refused(lambda: validate(make_cfg("doctor.lr_range.start_lr=1", "doctor.lr_range.end_lr=1e-5",
                                       config_name="doctor"), "doctor"),
             "doctor.lr_range.start_lr=1", "end_lr=1e-05")
    _refused(lambda: validate(make_cfg("doctor.data.std_range=[2,0.5]", config_name="doctor"), "doctor"),
             "doctor.data.std_range=[2, 0.5]")
    _refused(lambda: validate(make_cfg("doctor.gradients.update_ratio_low=2", config_name="doctor"), "doctor"),
             "doctor.gradients.update_ratio_low=2")


def test_doctor_cli_inverted_lr_range_exits_2(run_cli, tmp_path):
    done = run_cli("doctor", "doctor.lr_range.start_lr=1", "doctor.lr_range.end_lr=1e-5",
                   f"paths.output_dir={tmp_path / 'run'}", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    output = done.stdout + done.stderr
    assert "error: doctor.lr_range.start_lr=1 must be below end_lr=1e-05" in output and "FAIL" not in output
    assert not (tmp_path / "run").exists()


# ---- non-finite weights ----
def _poison(ckpt):
    name = next(k for k, v in ckpt["model"].items() if v.is_floating_point())
    ckpt["model"][name] = torch.full_like(ckpt["model"][name], math.nan)
    return name


def test_non_finite_weights_are_refused_at_load(trained_run, make_cfg, tmp_path):
    from cnnlab.run.weights import load_trained_model

    names = []
    path = _craft(trained_run, tmp_path, "nan.ckpt", lambda c: None, weights=lambda ck: names.append(_poison(ck)))
    _refused(lambda: load_trained_model(path, torch.device("cpu")), path, names[0], "NaN")
    _refused(lambda: evaluate(make_cfg(f"ckpt={path}", config_name="eval", run="eval"), overrides=[f"ckpt={path}"]),
             names[0], "not finite")
    resume = [f"trainer.resume={path}"]
    _refused(lambda: train(make_cfg(*resume, run="again"), overrides=resume), names[0])
    finetune = [f"finetune.checkpoint={path}", "data=digits"]
    _refused(lambda: train(make_cfg(*finetune, run="ft"), overrides=finetune), names[0])


def test_non_finite_weights_file_is_refused(tmp_path):
    from cnnlab.models.backbones import read_weights_file

    state = {"conv.weight": torch.zeros(2, 2), "fc.weight": torch.tensor([1.0, math.inf])}
    torch.save(state, tmp_path / "w.pt")
    _refused(lambda: read_weights_file(str(tmp_path / "w.pt")), "w.pt", "fc.weight", "infinity")


# ---- files named in a saved config are never opened ----
@pytest.mark.skipif(__import__("importlib").util.find_spec("timm") is None, reason="needs timm")
def test_a_timm_checkpoint_path_in_a_config_is_never_opened(make_cfg, tmp_path):
    planted = tmp_path / "planted.pt"
    torch.save({"x": Planted()}, planted)
    opened = []
    real_load = torch.load
    torch_load = lambda f, *a, **k: (opened.append(str(f)), real_load(f, *a, **k))[1]  # noqa: E731
    args = ["model=timm", "model.arch=resnet18", f"model.kwargs={{checkpoint_path:'{planted}'}}", "data=digits"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch, "load", torch_load)
        message = _refused(lambda: validate(make_cfg(*args)), "model.kwargs.checkpoint_path cannot be given",
                           "model.weights")
    assert "weights_only" not in message and str(planted) not in opened


def test_torchs_weights_only_advice_never_shows(tmp_path):
    from cnnlab.models.backbones import error_line as _first_line

    torch.save({"x": Planted()}, tmp_path / "bad.pt")
    with pytest.raises(Exception, match="weights_only") as info:
        torch.load(tmp_path / "bad.pt", weights_only=True)
    assert "weights_only" in str(info.value)
    line = _first_line(info.value)
    assert "weights_only" not in line and "trust" not in line and "can still be loaded" not in line


# ---- a hub run's trust on resume ----
def test_resuming_a_hub_run_with_trust_repo_says_how_to_trust_it(make_cfg, tmp_path):
    from test_backbones import hub_repo

    from cnnlab.run.restore import resume_config

    repo = hub_repo(tmp_path / "repo")
    train(make_cfg("data=digits", "data.input_size=[16,16]", "model=hub", f"model.repo={repo}", "model.entry=tiny",
                   "model.trust_repo=true", "trainer.max_epochs=1", "trainer.limit_train_batches=2", "logger=none"),
          overrides=[])
    run_dir = tmp_path / "run"
    args = [f"trainer.resume={run_dir}", "model=hub", "model.trust_repo=true"]
    message = _refused(lambda: resume_config(make_cfg(*args, run="again"), args),
                       "model.trust_repo=true", "turned off", f"trusted_repos=[\"{repo}\"]")
    assert "False in the checkpoint" not in message and "'???' now" not in message
    assert len(message.splitlines()) == 1
    # the whole model section on this command line, trusted there: the user's own trust, no difference to refuse
    own = [f"trainer.resume={run_dir}", "model=hub", f"model.repo={repo}", "model.entry=tiny", "model.trust_repo=true"]
    assert resume_config(make_cfg(*own, run="again"), own)[0].model.trust_repo is True
    trusted = [f"trainer.resume={run_dir}", f'trusted_repos=["{repo}"]']
    assert resume_config(make_cfg(*trusted, run="again"), trusted)[0].model.trust_repo is True


def test_predict_takes_a_checkpoint_from_a_machine_with_more_cores(trained_run, tmp_path):
    """cnnlab-predict, -export and -explain load no data: a saved data.num_workers above this machine's limit
    is no reason to refuse the checkpoint (eval and resume, which load data, name the limit)."""
    from cnnlab.run.weights import load_trained_model
    from cnnlab.run.validate import max_workers

    path = _craft(trained_run, tmp_path, "big.ckpt", lambda c: c["data"].__setitem__("num_workers", max_workers() + 1))
    assert load_trained_model(path, torch.device("cpu")).info.num_classes == 10


def test_non_finite_pretrained_weights_in_torch_hubs_cache_are_refused(tmp_path):
    from test_backbones import cache_torchvision_weights

    from cnnlab.models import build_model

    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        reference, path, _ = cache_torchvision_weights(tmp_path / "hub")
        state = reference.state_dict()
        state["features.1.conv.0.0.weight"][0, 0, 0, 0] = math.inf
        torch.save(state, path)
        _refused(lambda: build_model(OmegaConf.create({"name": "torchvision", "arch": "mobilenet_v2",
                                                       "weights": "DEFAULT"}), 3, 10, (32, 32)),
                 "model.weights=DEFAULT", "features.1.conv.0.0.weight", "infinity")
    finally:
        torch.hub.set_dir(previous)


@pytest.mark.skipif(__import__("importlib").util.find_spec("timm") is None, reason="needs timm")
def test_a_weights_file_named_in_a_saved_config_is_never_opened(make_cfg, tmp_path):
    """A timm run started from model.weights=<file>: its checkpoint holds the weights, so eval and resume
    rebuild the model without the file (gone, or replaced by anything) and never open it."""
    from cnnlab.models import build_model

    weights = tmp_path / "start.pt"
    torch.save(build_model(OmegaConf.create({"name": "timm", "arch": "test_efficientnet"}), 1, 10, (16, 16),
                           pretrained=False).state_dict(), weights)
    args = ["data=digits", "data.input_size=[16,16]", "model=timm", "model.arch=test_efficientnet",
            f"model.weights={weights}", "trainer.max_epochs=1", "trainer.limit_train_batches=2", "logger=none"]
    train(make_cfg(*args), overrides=args)
    torch.save({"x": Planted()}, weights)  # replaced: torch.load(weights_only=True) would refuse it with advice
    opened = []
    real_load = torch.load
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch, "load", lambda f, *a, **k: (opened.append(str(f)), real_load(f, *a, **k))[1])
        run_dir = tmp_path / "run"
        assert evaluate(make_cfg(f"ckpt={run_dir}", config_name="eval", run="eval"),
                        overrides=[f"ckpt={run_dir}"])["images"] > 0
        weights.unlink()
        resume = [f"trainer.resume={run_dir}"]
        train(make_cfg(*resume, run="again"), overrides=resume)
    assert str(weights) not in opened


@pytest.mark.parametrize("args, said", [
    ([], "ckpt is required"),
    (["ckpt=nowhere/run"], "ckpt=nowhere/run: no such file or directory"),
    (["ckpt=.", "split=training"], "split="),
])
def test_eval_refuses_a_bad_command_line_before_writing_anything(tmp_path, args, said, run_cli):
    """cnnlab-eval validates what it can before Hydra creates its run dir and log: nothing is written."""
    done = run_cli("evaluate", *args, f"paths.output_root={tmp_path / 'out'}", cwd=tmp_path)
    out = done.stdout + done.stderr
    assert done.returncode == 2, out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and said in errors[0], out
    assert "Traceback" not in out
    assert not list((tmp_path / "out").rglob("*"))  # no run dir, no evaluate.log (the checked root may exist)
