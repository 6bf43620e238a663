"""Our own zoo entries (no torchvision): MLP, CIFAR ResNets / plain nets, DenseNet-BC-100, YAML convnet."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from omegaconf import OmegaConf

from cnnlab.config.compose import CONFIG_DIR
from cnnlab.errors import ConfigError
from cnnlab.models import build_model
from cnnlab.models.cifar_resnet import BasicBlock

MODEL_DIR = f"{CONFIG_DIR}/model"
CIFAR = dict(in_channels=3, num_classes=10, input_size=(32, 32))


def model_cfg(name: str, **overrides):
    cfg = OmegaConf.load(f"{MODEL_DIR}/{name}.yaml")
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# Published (He et al. 2015, Table 6; Huang et al. 2017, Table 2): 0.27M, 0.46M, 0.66M, 0.85M, 1.7M, 0.8M.
EXACT = {
    "resnet20": 269_722, "resnet32": 464_154, "resnet44": 658_586, "resnet56": 853_018, "resnet110": 1_727_962,
    "plain20": 269_722, "plain56": 853_018, "densenet_bc100": 769_162,
}
PUBLISHED = {"resnet20": 0.27, "resnet32": 0.46, "resnet44": 0.66, "resnet56": 0.85, "resnet110": 1.7,
             "densenet_bc100": 0.8}


@pytest.mark.parametrize("name", sorted(EXACT))
def test_exact_parameter_counts_cifar10(name):
    assert n_params(build_model(model_cfg(name), **CIFAR)) == EXACT[name]


def test_counts_round_to_published():
    for name, millions in PUBLISHED.items():
        digits = 1 if millions >= 1 or name.startswith("densenet") else 2
        assert round(EXACT[name] / 1e6, digits) == millions, name


def test_convnet_exercise_parameter_total():
    model = build_model(model_cfg("convnet_exercise"), in_channels=3, num_classes=4, input_size=(32, 32))
    expected = (8 * 3 * 3 * 3 + 8) + (16 * 5 * 5 * 8 + 16) + (16 * 16 * 16 * 512 + 512) + (512 * 4 + 4)
    assert n_params(model) == expected == 2_103_156
    assert model.out_shapes[:2] == [(8, 32, 32), (16, 16, 16)]  # 'same' with stride 2: ceil(32 / 2)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4)


TRAINABLE = ["mlp", "resnet20", "plain20", "convnet", "convnet_exercise"]
SHAPES = [(1, 28, 28), (3, 32, 32)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", TRAINABLE)
def test_entry_overfits_a_fixed_batch(name, shape):
    torch.manual_seed(0)
    classes = 4 if name == "convnet_exercise" else 10
    model = build_model(model_cfg(name), in_channels=shape[0], num_classes=classes, input_size=shape[1:])
    x = torch.randn(16, *shape)
    y = torch.arange(16) % classes
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    losses = []
    for _ in range(20):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        final = nn.functional.cross_entropy(model(x), y).item()
    assert final < losses[0] * 0.7, (losses[0], final)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", ["resnet32", "resnet44", "resnet56", "resnet110", "plain56", "densenet_bc100"])
def test_deep_entries_forward(name, shape):
    model = build_model(model_cfg(name), in_channels=shape[0], num_classes=7, input_size=shape[1:])
    out = model(torch.randn(2, *shape))
    assert out.shape == (2, 7) and torch.isfinite(out).all()


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_option_b_projection_and_gradient_step(shape):
    model = build_model(model_cfg("resnet20", shortcut="B"), in_channels=shape[0], num_classes=10,
                        input_size=shape[1:])
    # two projections (stage 2 and 3 starts): 1x1 conv 16->32 + BN(32), 1x1 conv 32->64 + BN(64)
    extra = (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    base = n_params(build_model(model_cfg("resnet20"), in_channels=shape[0], num_classes=10, input_size=shape[1:]))
    assert n_params(model) == base + extra
    nn.functional.cross_entropy(model(torch.randn(2, *shape)), torch.tensor([0, 1])).backward()


def test_plain_net_has_no_shortcuts():
    torch.manual_seed(0)
    resnet = build_model(model_cfg("resnet20"), **CIFAR)
    plain = build_model(model_cfg("plain20"), **CIFAR)
    assert n_params(plain) == n_params(resnet)
    assert all(block.shortcut is None for block in plain.modules() if isinstance(block, BasicBlock))
    plain.load_state_dict(resnet.state_dict())  # same layers, same names
    resnet.eval(), plain.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(resnet(x), plain(x))
        # With every residual branch zeroed, the plain net outputs a constant (only the fc bias survives),
        # while the resnet still passes the (stem) signal through its identity shortcuts.
        for net in (resnet, plain):
            for block in net.modules():
                if isinstance(block, BasicBlock):
                    block.bn2.weight.zero_(), block.bn2.bias.zero_()
        plain_out, res_out = plain(x), resnet(x)
        assert torch.allclose(plain_out, plain.fc.bias.expand_as(plain_out))
        assert not torch.allclose(res_out[0], res_out[1])


def test_zero_init_residual_zeroes_last_bn_of_each_block():
    model = build_model(model_cfg("resnet56", zero_init_residual=True), **CIFAR)
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 27
    for block in blocks:
        assert torch.all(block.bn2.weight == 0)
        assert torch.all(block.bn1.weight == 1)
    assert torch.all(model.stem[1].weight == 1)
    default = build_model(model_cfg("resnet20"), **CIFAR)
    assert all(torch.all(m.bn2.weight == 1) for m in default.modules() if isinstance(m, BasicBlock))


def test_bad_resnet_and_densenet_keys():
    with pytest.raises(ConfigError, match="shortcut"):
        build_model(model_cfg("resnet20", shortcut="C"), **CIFAR)
    with pytest.raises(ConfigError, match="activation"):
        build_model(model_cfg("resnet20", activation="nope"), **CIFAR)
    with pytest.raises(ConfigError, match="zero_init_residual"):
        build_model(model_cfg("plain20", zero_init_residual=True), **CIFAR)
    with pytest.raises(ConfigError, match="depth"):
        build_model(model_cfg("densenet_bc100", depth=99), **CIFAR)


def test_mlp_options():
    model = build_model(model_cfg("mlp", hidden=[64], batch_norm=True, dropout=0.2, activation="gelu"),
                        in_channels=1, num_classes=10, input_size=(28, 28))
    assert n_params(model) == 784 * 64 + 2 * 64 + 64 * 10 + 10
    logistic = build_model(model_cfg("mlp", hidden=[]), in_channels=1, num_classes=10, input_size=(28, 28))
    assert n_params(logistic) == 784 * 10 + 10
    with pytest.raises(ConfigError, match="hidden"):
        build_model(model_cfg("mlp", hidden=[64, 0]), in_channels=1, num_classes=10, input_size=(28, 28))


def convnet(layers, num_classes=10, in_channels=3, size=(32, 32)):
    cfg = OmegaConf.create({"name": "convnet", "layers": layers})
    return build_model(cfg, in_channels=in_channels, num_classes=num_classes, input_size=size)


def test_convnet_layer_types_and_appended_output():
    model = convnet([
        {"type": "conv", "filters": 4, "kernel": 3, "padding": "valid", "activation": "relu"},  # 30x30
        {"type": "batchnorm"},
        {"type": "lrn", "size": 3},
        {"type": "pool", "kind": "l2", "kernel": 2},                                            # 15x15
        {"type": "conv", "filters": 6, "kernel": 4, "stride": 3, "padding": "same"},           # ceil(15/3)=5
        {"type": "pool", "kind": "avg", "kernel": 3, "stride": 1},                             # 3x3
        {"type": "activation", "name": "tanh"},
        {"type": "dense", "units": 8, "activation": "relu"},                                   # auto-flatten
        {"type": "batchnorm"},
        {"type": "dropout", "rate": 0.1},
    ])
    assert model.out_shapes == [(4, 30, 30), (4, 30, 30), (4, 30, 30), (4, 15, 15), (6, 5, 5), (6, 3, 3),
                                (6, 3, 3), (8,), (8,), (8,), (10,)]
    assert isinstance(model[-1], nn.Linear) and model[-1].out_features == 10
    assert any(isinstance(m, nn.LPPool2d) for m in model)
    assert model(torch.randn(3, 3, 32, 32)).shape == (3, 10)


@pytest.mark.parametrize("size,kernel,stride", [(32, 5, 2), (28, 3, 2), (7, 4, 3), (9, 2, 1), (10, 1, 4)])
def test_convnet_same_padding_matches_keras(size, kernel, stride):
    model = convnet([{"type": "conv", "filters": 2, "kernel": kernel, "stride": stride, "padding": "same"}],
                    in_channels=1, size=(size, size))
    assert model.out_shapes[0] == (2, -(-size // stride), -(-size // stride))
    # the map really has that size (the forward agrees with the arithmetic)
    conv_out = model[:-2](torch.randn(1, 1, size, size))
    assert conv_out.shape[-2:] == (-(-size // stride),) * 2


@pytest.mark.parametrize("layers,match", [
    ([{"type": "convolution", "filters": 8}], r"model\.layers\[0\].*conv, pool, batchnorm, lrn, dropout"),
    ([{"type": "flatten"}, {"filters": 8}], r"model\.layers\[1\].*type=None"),
    ([{"type": "conv", "filters": 8, "kernal": 3}], r"model\.layers\[0\] \(conv\) has no key\(s\) kernal"),
    ([{"type": "conv"}], r"model\.layers\[0\] \(conv\) needs key\(s\) filters"),
    ([{"type": "conv", "filters": 8, "padding": "full"}], r"layers\[0\].*padding='full'"),
    ([{"type": "pool", "kind": "median"}], r"layers\[0\].*kind='median'.*max, avg, l2"),
    ([{"type": "flatten"}, {"type": "conv", "filters": 2}], r"layers\[1\].*image-shaped"),
    ([{"type": "conv", "filters": 2, "kernel": 40, "padding": "valid"}], r"layers\[0\].*leaves nothing"),
    ([{"type": "dense", "units": 5}], r"layers\[0\].*units=5 must equal data.num_classes=10"),
    ([{"type": "dense", "units": 10, "activation": "relu"}], r"layers\[0\].*logits"),
    ([{"type": "activation", "name": "softmaxx"}], r"layers\[0\].*softmaxx"),
    ([{"type": "dropout", "rate": 1.5}], r"layers\[0\].*rate"),
    ("conv", r"model\.layers.*list"),
])
def test_convnet_errors(layers, match):
    with pytest.raises(ConfigError, match=match):
        convnet(layers)
