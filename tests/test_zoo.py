"""Zoo entries built on torchvision (and the paper AlexNet): published sizes, training on small and large
inputs, auxiliary heads, and the input-size check."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from cnnlab.engine.stepping import split_outputs
from cnnlab.errors import ConfigError
from cnnlab.models import build_model

# torchvision's published parameter counts at 1000 classes (GoogLeNet's without its auxiliary heads,
# Inception v3's with its auxiliary head, as torchvision reports them); AlexNet's from the paper's layout.
PUBLISHED = {
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032, "resnet101": 44_549_160,
    "resnet152": 60_192_808, "vgg11": 132_863_336, "vgg13": 133_047_848, "vgg16": 138_357_544,
    "vgg19": 143_667_240, "vgg11_bn": 132_868_840, "vgg13_bn": 133_053_736, "vgg16_bn": 138_365_992,
    "vgg19_bn": 143_678_248, "densenet121": 7_978_856, "densenet169": 14_149_480, "densenet201": 20_013_928,
    "alexnet_torchvision": 61_100_840, "googlenet": 6_624_904, "inception_v3": 27_161_264,
    "alexnet": 62_378_344,
}


def model(name, in_channels=3, num_classes=10, size=(32, 32), **keys):
    torch.manual_seed(0)  # the same initial weights whichever tests ran before in this process (pytest -n)
    return build_model(OmegaConf.create({"name": name, **keys}), in_channels, num_classes, size)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_counts_match_the_published_ones(name):
    size = (299, 299) if name == "inception_v3" else (227, 227) if name == "alexnet" else (224, 224)
    with torch.device("meta"):
        m = model(name, 3, 1000, size)
    params = dict(m.named_parameters())
    if name == "googlenet":
        params = {k: v for k, v in params.items() if not k.startswith("aux")}
    assert sum(p.numel() for p in params.values()) == PUBLISHED[name]


def test_paper_alexnet_two_gpu_grouping():
    with torch.device("meta"):
        assert sum(p.numel() for p in model("alexnet", 3, 1000, (227, 227), groups=2).parameters()) == 60_965_224


def loss_goes_down(m, in_channels, size, steps=4, batch=4, num_classes=10):
    torch.manual_seed(0)
    x = torch.randn(batch, in_channels, *size)
    y = torch.randint(0, num_classes, (batch,))
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    m.train()
    losses = []
    for _ in range(steps):
        logits, aux = split_outputs(m(x))
        loss = torch.nn.functional.cross_entropy(logits, y)
        losses.append(float(loss.detach()))
        loss = loss + sum(0.3 * torch.nn.functional.cross_entropy(a, y) for a in aux)
        opt.zero_grad()
        loss.backward()
        opt.step()
    # Still in train mode: after a few steps BN's running statistics are not yet the batch's.
    with torch.no_grad():
        final = float(torch.nn.functional.cross_entropy(split_outputs(m(x))[0], y))
    return losses[0], final


def no_dropout(name):
    """Dropout off, so that a few steps on one batch show the optimisation itself."""
    return {"dropout": 0.0} if name.startswith(("vgg", "alexnet", "googlenet", "inception")) else {}


SMALL = ["alexnet_small", "resnet18", "resnet34", "resnet50", "vgg11", "vgg11_bn", "vgg16_bn", "densenet121",
         "googlenet"]
HEAVY = ["resnet101", "resnet152", "vgg13", "vgg13_bn", "vgg16", "vgg19", "vgg19_bn", "densenet169", "densenet201"]


# Each entry trains in the default run on one of the two shapes (the cheaper one for it; both shapes are among
# them); the other shape of each entry runs with the slow tests.
DEFAULT_SHAPE = {"alexnet_small": "3x32x32", "resnet18": "3x32x32", "resnet34": "1x28x28", "resnet50": "1x28x28",
                 "vgg11": "1x28x28", "vgg11_bn": "3x32x32", "vgg16_bn": "3x32x32", "densenet121": "1x28x28",
                 "googlenet": "1x28x28"}
SHAPES = {"1x28x28": (1, (28, 28)), "3x32x32": (3, (32, 32))}


@pytest.mark.parametrize("name,shape", [
    pytest.param(name, SHAPES[key], id=f"{name}-{key}",
                 marks=() if DEFAULT_SHAPE[name] == key else pytest.mark.slow)
    for name in SMALL for key in SHAPES])
def test_small_image_entries_train(name, shape):
    in_channels, size = shape
    first, final = loss_goes_down(model(name, in_channels, 10, size, **no_dropout(name)), in_channels, size)
    assert final < first, (name, first, final)


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(1, (28, 28)), (3, (32, 32))], ids=["1x28x28", "3x32x32"])
@pytest.mark.parametrize("name", HEAVY)
def test_heavy_entries_train(name, shape):
    in_channels, size = shape
    first, final = loss_goes_down(model(name, in_channels, 10, size, **no_dropout(name)), in_channels, size)
    assert final < first


# The two AlexNets (61-62M parameters, most in their 4096-unit classifier) take the longest: slow tests.
@pytest.mark.parametrize("name,size", [pytest.param("alexnet", (227, 227), marks=pytest.mark.slow),
                                       pytest.param("alexnet_torchvision", (224, 224), marks=pytest.mark.slow),
                                       ("resnet18", (224, 224)), ("inception_v3", (75, 75))])
def test_large_input_entries_train(name, size):
    keys = {**no_dropout(name), **({"aux_logits": False} if name == "inception_v3" else {})}
    first, final = loss_goes_down(model(name, 3, 10, size, **keys), 3, size, batch=2)
    assert final < first


def test_googlenet_aux_heads_count_in_training_only():
    m = model("googlenet", 3, 10, (32, 32))
    x = torch.randn(2, 3, 32, 32)
    m.train()
    logits, aux = split_outputs(m(x))
    assert logits.shape == (2, 10) and len(aux) == 2 and all(a.shape == (2, 10) for a in aux)
    assert m.aux_loss_weight == 0.3
    m.eval()
    with torch.no_grad():
        out = m(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 10)


def test_trainer_adds_the_weighted_aux_losses(make_cfg):
    from cnnlab.run.lifecycle import prepare

    run = prepare(make_cfg("model=googlenet", "data.batch_size=4", "trainer.limit_train_batches=1", "logger=none",
                          "trainer.precision=32"),  # the expected loss below is computed in fp32
                  overrides=[])
    x, y = next(iter(run.data.train))
    trainer = run.trainer
    torch.manual_seed(0)
    run.model.train()
    with torch.no_grad():
        logits, aux = split_outputs(run.model(x))
        expected = trainer.task.loss(logits, y) + 0.3 * sum(trainer.task.loss(a, y) for a in aux)
    torch.manual_seed(0)
    loss, _ = trainer.train_step(x, y)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    run.tb.close()


def test_resnet18_through_the_training_entry_point(make_cfg):
    from cnnlab.run.lifecycle import train

    # 40 single-channel 28x28 noise images (an epoch of ResNet-18 on CPU is what costs here, not the data)
    tiny = ["data=fake", "data.num_samples=40", "data.in_channels=1", "data.image_size=[28,28]",
            "data.input_size=[28,28]", "data.mean=[0.5]", "data.std=[0.5]", "data.batch_size=16"]
    metrics = train(make_cfg("model=resnet18", *tiny, "trainer.max_epochs=1", "trainer.limit_train_batches=2",
                             "logger=none"), overrides=[])
    assert metrics["params"] < 11_689_512  # 3x3 single-channel stem and a 10-class head
    assert 0 <= metrics["test/acc"] <= 1


@pytest.mark.parametrize("name,channels,size,layer,smallest", [
    ("alexnet_torchvision", 1, (28, 28), "layer 'features.5' (MaxPool2d)", "63x63"),
    ("alexnet", 3, (32, 32), "Output size is too small", "67x67"),
])
def test_too_small_inputs_name_the_layer_and_the_minimum(name, channels, size, layer, smallest):
    with pytest.raises(ConfigError, match="cannot take") as info:
        model(name, channels, 10, size)
    text = str(info.value)
    assert f"model {name!r} cannot take {channels}x{size[0]}x{size[1]} inputs" in text
    assert layer in text and f"smallest square input it accepts is {smallest}" in text


def test_inception_v3_needs_75_pixels_and_299_for_its_aux_head():
    with pytest.raises(ConfigError, match="inception_v3 needs inputs of at least 75x75"):
        model("inception_v3", 3, 10, (32, 32))
    with pytest.raises(ConfigError, match="auxiliary classifier needs inputs of at least 299x299.*aux_logits=false"):
        model("inception_v3", 3, 10, (128, 128))


def test_unknown_model_lists_the_zoo():
    with pytest.raises(ConfigError, match="model.name='resnet19' is not in the zoo; choose one of .*resnet18"):
        model("resnet19")


def test_num_classes_zero_is_refused():
    with pytest.raises(ConfigError, match="num_classes=0"):
        model("resnet18", 3, 0)


@pytest.mark.parametrize("scheme", ["kaiming", "xavier"])
def test_weight_init_schemes(scheme):
    torch.manual_seed(0)
    default = model("lenet5", 1, 10, (28, 28))
    torch.manual_seed(0)
    m = model("lenet5", 1, 10, (28, 28), init=scheme)
    conv = m.features[0]
    assert not torch.equal(conv.weight, default.features[0].weight)
    assert torch.count_nonzero(conv.bias) == 0
    fan_in = conv.weight[0].numel()
    fan_out = conv.weight.shape[0] * conv.weight[0, 0].numel()
    expected_std = (2.0 / fan_out) ** 0.5 if scheme == "kaiming" else (2.0 / (fan_in + fan_out)) ** 0.5
    assert float(conv.weight.std()) == pytest.approx(expected_std, rel=0.35)


def test_unknown_init_is_refused():
    with pytest.raises(ConfigError, match="model.init='orthogonal' is not accepted; choose one of default, kaiming"):
        model("resnet20", init="orthogonal")


@pytest.fixture
def hub_dir(tmp_path):
    """A private torch.hub cache for the test, restored afterwards."""
    import torch.hub

    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(previous)


def test_pretrained_weights_without_network_say_how_to_supply_the_file(monkeypatch, hub_dir):
    import urllib.error

    import torch.hub

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)  # what a download would call
    with pytest.raises(ConfigError, match="model.weights=IMAGENET1K_V1: cannot load https://") as info:
        model("resnet18", 3, 5, (224, 224), weights="IMAGENET1K_V1")
    text = str(info.value)
    assert "model.weights=IMAGENET1K_V1: cannot load https://" in text
    assert str(hub_dir / "checkpoints" / "resnet18-f37072fd.pth") in text and "finetune.checkpoint=" in text


def test_pretrained_weights_of_another_architecture_or_unknown_name():
    with pytest.raises(ConfigError, match="ResNet18_Weights.IMAGENET1K_V1' does not fit model 'resnet50'.*"
                                          "ResNet50_Weights.IMAGENET1K_V2"):
        model("resnet50", 3, 10, (224, 224), weights="ResNet18_Weights.IMAGENET1K_V1")
    with pytest.raises(ConfigError, match="'IMAGENET22K' does not fit model 'vgg16'"):
        model("vgg16", 3, 10, (224, 224), weights="IMAGENET22K")


def test_pretrained_weights_from_the_local_cache_replace_the_head(hub_dir):
    """With the weights file already in torch.hub's cache (as a user without network would place it),
    the model loads it and gets a fresh head for the new classes."""
    import torchvision.models as tvm

    reference = tvm.resnet18(weights=None)
    cached = hub_dir / "checkpoints" / tvm.ResNet18_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    cached.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), cached)
    m = model("resnet18", 3, 7, (224, 224), weights="IMAGENET1K_V1")
    assert m.fc.out_features == 7
    assert torch.equal(m.layer1[0].conv1.weight, reference.layer1[0].conv1.weight)


@pytest.mark.parametrize("name", ["resnet18", "vgg11", "alexnet_torchvision", "alexnet_small", "alexnet"])
def test_activation_knob_on_torchvision_entries(name):
    size = {"alexnet_torchvision": (64, 64), "alexnet": (67, 67)}.get(name, (32, 32))
    m = model(name, 3, 10, size, activation="silu")
    kinds = {type(x) for x in m.modules()}
    assert torch.nn.SiLU in kinds and torch.nn.ReLU not in kinds
    assert m(torch.randn(2, 3, *size)).shape == (2, 10)
    with pytest.raises(ConfigError, match="model.activation='relu7' is not accepted"):
        model(name, 3, 10, size, activation="relu7")
