"""Backbones from torchvision (any classification model), timm and torch.hub, offline: the weights the tests
need are put into the caches (torch.hub's checkpoints dir, the Hugging Face cache, a hub repository dir) by
the tests themselves, the way a user without network would place them."""

from __future__ import annotations

import importlib.util
import urllib.error

import pytest
import torch
from omegaconf import OmegaConf

from cnnlab.config.compose import compose_config
from cnnlab.errors import ConfigError
from cnnlab.engine.freezing import head_names
from cnnlab.models import build_model, model_config_problems
from cnnlab.run.validate import validate

needs_timm = pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="needs pip install 'cnnlab[timm]'")


def build(name, in_channels=3, num_classes=10, size=(32, 32), load=True, **keys):
    """build_model for the model section {name, **keys}; load=False: as for a checkpoint's weights."""
    torch.manual_seed(0)
    return build_model(OmegaConf.create({"name": name, **keys}), in_channels, num_classes, size, pretrained=load)


@pytest.fixture
def hub_dir(tmp_path):
    """A private torch.hub cache ($TORCH_HOME/hub) for the test, restored afterwards."""
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(previous)


def cache_torchvision_weights(hub_dir, arch="mobilenet_v2", member="DEFAULT"):
    """A freshly initialised model's state dict under the exact file name torchvision loads for `member`."""
    import torchvision.models as tvm

    enum = tvm.get_model_weights(arch)
    weights = enum.DEFAULT if member == "DEFAULT" else enum[member]
    torch.manual_seed(1)
    quiet = {"init_weights": False} if arch in ("googlenet", "inception_v3") else {}  # no scipy init (slow)
    reference = tvm.get_model_builder(arch)(weights=None, num_classes=len(weights.meta["categories"]), **quiet)
    path = hub_dir / "checkpoints" / weights.url.rsplit("/", 1)[-1]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(reference.state_dict(), path)
    return reference, path, weights.url


# ---- model=torchvision -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch,head", [("mobilenet_v3_small", ["classifier.3"]), ("squeezenet1_1", ["classifier.1"]),
                                       ("regnet_x_400mf", ["fc"]), ("efficientnet_b0", ["classifier.1"])])
def test_any_torchvision_model_takes_small_grey_images_and_names_its_head(arch, head):
    m = build("torchvision", 1, 10, (28, 28), arch=arch)
    first = next(x for x in m.modules() if isinstance(x, torch.nn.Conv2d))
    assert first.in_channels == 1 and first.stride == (1, 1)  # grey input, small-image stem (stride 2 -> 1)
    assert head_names(m, 10) == head  # SqueezeNet's head is a 1x1 convolution, EfficientNet has 10-wide SE convs
    m.eval()
    assert m(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_resnet18_by_name_is_the_zoo_entry():
    """Known families reuse the zoo's stem adaptation: model=torchvision arch=resnet18 is model=resnet18."""
    for channels, size in ((1, (28, 28)), (3, (224, 224))):
        with torch.device("meta"):
            ours, zoo = build("torchvision", channels, 7, size, arch="resnet18"), build("resnet18", channels, 7, size)
        assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in zoo.state_dict().items()}


def test_unknown_arch_and_bad_keys_are_refused_before_data_loads(tmp_path):
    with pytest.raises(ConfigError, match="is not a torchvision classification model") as info:
        validate(compose_config(["model=torchvision", "model.arch=mobilenetv2", "model.adapt_stem=maybe",
                                 "model.kwargs={num_classes: 3}"], tmp_path))
    text = str(info.value)
    assert "model.arch='mobilenetv2' is not a torchvision classification model; did you mean mobilenet_v2" in text
    assert "model.adapt_stem='maybe' is not accepted; choose one of auto, true, false" in text
    assert "model.kwargs.num_classes cannot be given: set from the data (data.num_classes)" in text
    problems = model_config_problems(OmegaConf.create({"name": "torchvision", "arch": "resnet18",
                                                       "weights": "IMAGENET22K"}))
    assert problems[0].startswith("model.weights='IMAGENET22K' does not fit model.arch=resnet18; its weights are "
                                  "ResNet18_Weights.IMAGENET1K_V1")
    problems = model_config_problems(OmegaConf.create({"name": "torchvision", "arch": "resnet18", "init": "kaiming",
                                                       "weights": "IMAGENET1K_V1"}))
    assert problems == ["model.init=kaiming would overwrite the pretrained weights; use model.init=default with "
                        "model.weights=IMAGENET1K_V1"]
    with pytest.raises(ConfigError, match=f"model.weights={tmp_path / 'nope.pth'}: no such file"):
        build("torchvision", arch="resnet18", weights=str(tmp_path / "nope.pth"))


def test_weights_default_load_from_torch_hubs_cache(hub_dir):
    reference, _, _ = cache_torchvision_weights(hub_dir)
    m = build("torchvision", 1, 10, (28, 28), arch="mobilenet_v2", weights="DEFAULT")
    own, ref = m.state_dict(), reference.state_dict()
    assert all(torch.equal(own[k], ref[k]) for k in ref if not k.startswith(("features.0.0.", "classifier.1.")))
    # the first conv's weights summed over RGB for 1-channel images; a fresh 10-way head
    assert torch.equal(own["features.0.0.weight"], ref["features.0.0.weight"].sum(dim=1, keepdim=True))
    assert m.classifier[1].out_features == 10 and head_names(m, 10) == ["classifier.1"]


def test_missing_weights_offline_name_the_file_and_its_url(hub_dir, monkeypatch):
    import torchvision.models as tvm

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)  # what a download would call
    url = tvm.MobileNet_V2_Weights.IMAGENET1K_V2.url
    with pytest.raises(ConfigError, match=r"cannot load .* \(<urlopen error no network>\)") as info:
        build("torchvision", arch="mobilenet_v2", weights="IMAGENET1K_V2")
    text = str(info.value)
    assert f"cannot load {url} (<urlopen error no network>)" in text
    assert f"put it at {hub_dir / 'checkpoints' / url.rsplit('/', 1)[-1]} (torch.hub's cache" in text


def test_rebuilt_without_weights_is_the_architecture_the_weights_imply(hub_dir):
    """eval/predict/resume rebuild a run's model without its pretrained file; torchvision's GoogLeNet weights
    drop the auxiliary heads and normalise inputs inside the model, so the rebuilt model must too."""
    cache_torchvision_weights(hub_dir, "googlenet")
    pretrained = build("torchvision", 3, 5, (64, 64), arch="googlenet", weights="DEFAULT")
    (hub_dir / "checkpoints").rename(hub_dir / "elsewhere")  # gone: the rebuild must not need it
    rebuilt = build("torchvision", 3, 5, (64, 64), arch="googlenet", weights="DEFAULT", load=False)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in pretrained.state_dict().items()}
    assert rebuilt.transform_input and pretrained.transform_input and rebuilt.aux1 is None
    rebuilt.load_state_dict(pretrained.state_dict())
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(rebuilt.eval()(x), pretrained.eval()(x))


def test_a_weights_file_loads_into_all_but_the_head(tmp_path):
    import torchvision.models as tvm

    torch.manual_seed(2)
    source = tvm.mobilenet_v3_small(num_classes=8)  # another task's head, RGB
    torch.save({"state_dict": source.state_dict()}, tmp_path / "source.pth")
    m = build("torchvision", 1, 4, (28, 28), arch="mobilenet_v3_small", weights=str(tmp_path / "source.pth"))
    own, ref = m.state_dict(), source.state_dict()
    assert torch.equal(own["features.1.block.0.0.weight"], ref["features.1.block.0.0.weight"])
    assert torch.equal(own["classifier.0.weight"], ref["classifier.0.weight"])  # backbone side of the classifier
    assert torch.equal(own["features.0.0.weight"], ref["features.0.0.weight"].sum(dim=1, keepdim=True))
    assert own["classifier.3.weight"].shape == (4, 1024)
    torch.save(tvm.mobilenet_v2().state_dict(), tmp_path / "other.pth")
    with pytest.raises(ConfigError, match=r"model.weights=.*other.pth does not fit this model outside its head"):
        build("torchvision", 1, 4, (28, 28), arch="mobilenet_v3_small", weights=str(tmp_path / "other.pth"))


def test_frozen_backbone_and_backbone_lr_know_a_convolutional_head(make_cfg):
    from cnnlab.run.lifecycle import prepare

    run = prepare(make_cfg("data=digits", "model=torchvision", "model.arch=squeezenet1_1", "finetune.freeze=backbone",
                           "finetune.backbone_lr_scale=0.1", "scheduler=none", "optimizer.lr=0.002", "logger=none"),
                  overrides=[])
    trainable = sorted(name for name, p in run.model.named_parameters() if p.requires_grad)
    assert trainable == ["classifier.1.bias", "classifier.1.weight"]
    lrs = {id(p): g["lr"] for g in run.trainer.task.optimizer.param_groups for p in g["params"]}
    assert lrs[id(run.model.classifier[1].weight)] == pytest.approx(0.002)  # the head at the full rate
    assert lrs[id(run.model.features[0].weight)] == pytest.approx(0.0002)  # the backbone at a tenth, once unfrozen
    run.tb.close()


@pytest.mark.integration  # starts processes: a training's data loader workers or a command
def test_train_then_eval_and_predict_without_the_weights_file(make_cfg, tmp_path):
    """A run started from a weights file is rebuilt from its saved config alone: the file may be gone."""
    import torchvision.models as tvm

    from cnnlab.cli.evaluate import evaluate
    from cnnlab.run.weights import load_trained_model
    from cnnlab.run.lifecycle import train

    torch.manual_seed(3)
    weights = tmp_path / "source.pth"
    torch.save(tvm.mobilenet_v3_small(num_classes=8).state_dict(), weights)
    metrics = train(make_cfg("data=digits", "data.input_size=[16,16]", "model=torchvision",
                             "model.arch=mobilenet_v3_small", f"model.weights={weights}", "finetune.freeze=backbone",
                             "trainer.max_epochs=1", "trainer.limit_train_batches=2", "logger=none"), overrides=[])
    weights.unlink()
    run_dir = tmp_path / "run"
    loaded = load_trained_model(run_dir / "checkpoints" / "best.ckpt", torch.device("cpu"))
    assert head_names(loaded.model, 10) == ["classifier.3"]
    result = evaluate(make_cfg(f"ckpt={run_dir}", config_name="eval", run="eval"), overrides=[f"ckpt={run_dir}"])
    assert result["test/acc"] == pytest.approx(metrics["test/acc"])


def test_summary_shows_the_frozen_backbone_without_loading_weights(tmp_path):
    from cnnlab.cli.summary import build_summary

    cfg = compose_config(["model=torchvision", "model.arch=mobilenet_v2", "model.weights=DEFAULT", "data=digits",
                          "finetune.freeze=backbone"], tmp_path, "summary")
    summary = build_summary(cfg)  # no file in any cache: the summary builds the architecture only
    assert summary.trainable_params == 1280 * 10 + 10
    assert summary.params == summary.trainable_params + summary.frozen_params > 2_000_000
    assert summary.notes[0] == "model.weights=DEFAULT is not loaded: weights do not change the architecture"


# ---- model=timm --------------------------------------------------------------------------------------------------
@needs_timm
def test_timm_model_sized_for_small_grey_images():
    m = build("timm", 1, 6, (28, 28), arch="test_efficientnet")
    assert m.conv_stem.in_channels == 1 and m.conv_stem.stride == (1, 1)
    assert head_names(m, 6) == ["classifier"]
    assert m.eval()(torch.randn(2, 1, 28, 28)).shape == (2, 6)


def fake_hf_cache(root, repo_id, files: dict):
    """The Hugging Face cache layout: models--<org>--<name>/refs/main -> snapshots/<commit>/<file>."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, write in files.items():
        write(snapshot / name)


@needs_timm
def test_timm_pretrained_weights_from_the_local_hugging_face_cache(tmp_path, monkeypatch, hub_dir):
    import timm
    from safetensors.torch import save_file

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(ConfigError, match="is not in the local Hugging Face cache") as info:
        build("timm", 3, 4, (32, 32), arch="test_efficientnet", pretrained=True)
    text = str(info.value)
    assert "Hugging Face Hub repo timm/test_efficientnet.r160_in1k (model.safetensors or pytorch_model.bin)" in text
    assert f"is not in the local Hugging Face cache {tmp_path / 'hf'}" in text and "model.weights=<path>" in text
    torch.manual_seed(4)
    reference = timm.create_model("test_efficientnet", num_classes=1000)
    fake_hf_cache(tmp_path / "hf", "timm/test_efficientnet.r160_in1k",
                  {"model.safetensors": lambda path: save_file(reference.state_dict(), str(path))})
    m = build("timm", 3, 4, (32, 32), arch="test_efficientnet", pretrained=True)
    own, ref = m.state_dict(), reference.state_dict()
    assert all(torch.equal(own[k], ref[k]) for k in ref if not k.startswith("classifier."))
    assert m.classifier.out_features == 4
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))  # a rebuild for a checkpoint's weights reads no file
    rebuilt = build("timm", 3, 4, (32, 32), load=False, arch="test_efficientnet", pretrained=True)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in own.items()}


def test_missing_timm_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "timm" else real(name, *a))
    assert model_config_problems(OmegaConf.create({"name": "timm", "arch": "resnet18"})) == [
        "model=timm needs the timm package: pip install 'cnnlab[timm]'"]


@needs_timm
def test_unknown_timm_arch_lists_close_names():
    problems = model_config_problems(OmegaConf.create({"name": "timm", "arch": "resnet_18"}))
    assert problems[0].startswith("model.arch='resnet_18' is not one of timm's") and "resnet18" in problems[0]


# ---- model=hub ---------------------------------------------------------------------------------------------------
HUBCONF = '''
dependencies = ["torch"]

import torch.nn as nn


class Tiny(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(width, 1000)

    def forward(self, x):
        return self.fc(self.features(x))


def tiny(width=8):
    """A tiny CNN with an ImageNet-sized head."""
    return Tiny(width)
'''


def hub_repo(path):
    path.mkdir(parents=True)
    (path / "hubconf.py").write_text(HUBCONF)
    return path


def test_hub_entry_from_a_local_directory(tmp_path):
    repo = hub_repo(tmp_path / "repo")
    m = build("hub", 1, 5, (28, 28), repo=str(repo), entry="tiny", trust_repo=True, kwargs={"width": 6})
    assert m.fc.out_features == 5 and head_names(m, 5) == ["fc"]
    assert m.features[0].in_channels == 1 and m.features[0].stride == (1, 1)
    assert m.eval()(torch.randn(2, 1, 28, 28)).shape == (2, 5)
    with pytest.raises(ConfigError, match=r"model.entry='tinny' is not an entry point of .*hubconf.py; it has: tiny"):
        build("hub", repo=str(repo), entry="tinny", trust_repo=True)


def test_hub_repository_from_torch_hubs_cache_offline(hub_dir):
    hub_repo(hub_dir / "someone_nets_main")  # what torch.hub.load('someone/nets', ...) leaves in the cache
    m = build("hub", 3, 4, (32, 32), repo="someone/nets", entry="tiny", trust_repo=True)
    assert m.fc.out_features == 4
    with pytest.raises(ConfigError, match="not in torch.hub's cache") as info:
        build("hub", repo="someone/nets:v2", entry="tiny", trust_repo=True)
    assert f"model.repo=someone/nets:v2: not in torch.hub's cache: expected {hub_dir / 'someone_nets_v2'}" in str(info.value)


def test_hub_code_runs_only_when_trusted(tmp_path):
    repo = hub_repo(tmp_path / "repo")
    (repo / "hubconf.py").write_text(HUBCONF + "\nraise SystemExit('ran untrusted code')\n")
    problems = model_config_problems(OmegaConf.create({"name": "hub", "repo": str(repo), "entry": "tiny",
                                                       "trust_repo": False}))
    assert problems == [f"model.trust_repo=false: model=hub runs the repository's hubconf.py (Python code from "
                        f"{repo}) in this process; set model.trust_repo=true if you trust that code"]
    with pytest.raises(ConfigError, match="model.trust_repo=false"):
        build("hub", repo=str(repo), entry="tiny")
    with pytest.raises(ConfigError, match=r"model.repo=None: set model.repo to owner/repo\[:ref\]"):
        validate(compose_config(["model=hub", "model.entry=tiny", "model.trust_repo=true"], tmp_path))


def test_hub_model_summary_with_a_frozen_backbone(tmp_path):
    from cnnlab.cli.summary import build_summary

    repo = hub_repo(tmp_path / "repo")
    cfg = compose_config(["model=hub", f"model.repo={repo}", "model.entry=tiny", "model.trust_repo=true",
                          "data=digits", "finetune.freeze=backbone"], tmp_path, "summary")
    summary = build_summary(cfg)
    assert summary.trainable_params == 8 * 10 + 10 and summary.output_shape == (10,)
    assert summary.frozen_params == 1 * 8 * 9 + 8 + 2 * 8  # the 1-channel first conv and its batch norm


@pytest.mark.integration  # starts processes: a training's data loader workers or a command
def test_a_hub_checkpoint_runs_its_repository_only_when_this_command_trusts_it(make_cfg, tmp_path):
    """The saved config's trust_repo=true was the trainer's trust: eval, resume, predict, export and explain of a
    checkpoint (a file from anyone) run the repository's hubconf.py only when their own command line trusts it."""
    from cnnlab.cli.evaluate import evaluate
    from cnnlab.cli.explain import explain
    from cnnlab.cli.export import export
    from cnnlab.cli.predict import predict
    from cnnlab.run.restore import resume_config
    from cnnlab.run.lifecycle import train

    repo = hub_repo(tmp_path / "repo")
    ran = tmp_path / "hubconf_ran"
    (repo / "hubconf.py").write_text(f"open({str(ran)!r}, 'a').close()\n" + HUBCONF)
    train(make_cfg("data=digits", "data.input_size=[16,16]", "model=hub", f"model.repo={repo}", "model.entry=tiny",
                   "model.trust_repo=true", "trainer.max_epochs=1", "trainer.limit_train_batches=2", "logger=none"),
          overrides=[])
    run_dir = tmp_path / "run"
    ran.unlink()
    image = tmp_path / "digit.png"
    from PIL import Image
    Image.new("L", (8, 8), 128).save(image)

    refusals = {
        "eval": lambda: evaluate(make_cfg(f"ckpt={run_dir}", config_name="eval", run="eval"),
                                 overrides=[f"ckpt={run_dir}"]),
        "resume": lambda: resume_config(make_cfg(f"trainer.resume={run_dir}", run="resumed"),
                                        [f"trainer.resume={run_dir}"]),
        "predict": lambda: predict(str(run_dir), [str(image)], device="cpu"),
        "export": lambda: export(str(run_dir), "torchscript", str(tmp_path / "m.pt")),
        "explain": lambda: explain(str(run_dir), [str(image)], out=str(tmp_path / "pics"), device="cpu"),
        "predict, another repository trusted": lambda: predict(str(run_dir), [str(image)], device="cpu",
                                                               trusted_repos=(str(tmp_path / "elsewhere"),)),
    }
    for command, call in refusals.items():
        with pytest.raises(ConfigError, match="runs the Python code of") as info:
            call()
        how = f"'trusted_repos=[\"{repo}\"]'" if command in ("eval", "resume") else f"--trust-repo {repo}"
        assert f"model=hub in the config saved in {run_dir / 'checkpoints'}" in str(info.value), (command, info.value)
        assert f"runs the Python code of {repo}'s hubconf.py" in str(info.value) and f"add {how}" in str(info.value)
        assert not ran.exists(), f"{command} ran the repository's code before refusing"

    trusted = [f"ckpt={run_dir}", f'trusted_repos=["{repo}"]']  # as the error message says to add it
    result = evaluate(make_cfg(*trusted, config_name="eval", run="eval"), overrides=trusted)
    assert ran.exists() and result["images"] > 0
    ran.unlink()
    resumed = [f"trainer.resume={run_dir}", f'trusted_repos=["{repo}"]']
    assert resume_config(make_cfg(*resumed, run="resumed"), resumed)[0].model.repo == str(repo)
    other = [f"trainer.resume={run_dir}", f'trusted_repos=["{tmp_path / "elsewhere"}"]']  # another repository
    with pytest.raises(ConfigError, match="trusted_repos"):
        resume_config(make_cfg(*other, run="other"), other)
    assert predict(str(run_dir), [str(image)], device="cpu", trusted_repos=(str(repo),))[0]["top"]
    assert ran.exists()


def test_owner_repo_always_means_the_hub_cache_never_a_folder_of_that_name_here(hub_dir, tmp_path, monkeypatch):
    """A folder planted where a command runs cannot stand in for a repository trusted by name: owner/repo is
    torch.hub's cache; ./owner/repo is the folder."""
    from cnnlab.models.hub_source import hub_repo_dir

    cached = hub_repo(hub_dir / "someone_nets_main")
    monkeypatch.chdir(tmp_path)
    hub_repo(tmp_path / "someone" / "nets")
    assert hub_repo_dir("someone/nets") == cached
    assert hub_repo_dir("./someone/nets").resolve() == (tmp_path / "someone" / "nets").resolve()
