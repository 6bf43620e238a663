"""The architecture inspector against hand-computed and published figures, for every zoo entry, through the
cnnlab-summary command line, and at the start of training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from cnnlab.config.compose import CONFIG_DIR
from cnnlab.errors import ConfigError
from cnnlab.models.inspector.layer_report import LayerFailure
from cnnlab.models.inspector.summarize import summarize
from cnnlab.models.inspector.tracing import first_failure, smallest_square_input
from cnnlab.models import build_model

MODEL_CONFIGS = sorted(p.stem for p in Path(CONFIG_DIR, "model").glob("*.yaml"))


def entry_cfg(stem: str, **keys):
    cfg = OmegaConf.load(f"{CONFIG_DIR}/model/{stem}.yaml")
    for key, value in keys.items():
        cfg[key] = value
    return cfg


def meta_summary(stem: str, channels: int, classes: int, size, **keys):
    with torch.device("meta"):
        model = build_model(entry_cfg(stem, **keys), channels, classes, size)
    return model, summarize(model, (channels, *size), stem)


def rows(summary) -> dict:
    return {layer.name: layer for layer in summary.layers}


def out_size(w: int, k: int, p: int, s: int) -> int:
    """The course formula O = (W - K + 2P) / S + 1."""
    return (w - k + 2 * p) // s + 1


# ---- hand-computed figures ------------------------------------------------------------------------------------
def test_alexnet_first_conv_and_first_pool():
    _, summary = meta_summary("alexnet", 3, 1000, (227, 227))
    conv1, pool1 = rows(summary)["features.0"], rows(summary)["features.3"]
    side = out_size(227, 11, 0, 4)
    assert side == 55 and conv1.output_shape == (96, 55, 55)  # 55x55x96
    assert (conv1.kernel, conv1.stride, conv1.padding) == ((11, 11), (4, 4), (0, 0))
    assert conv1.trainable_params == (11 * 11 * 3) * 96 + 96 == 34_944 and conv1.frozen_params == 0
    assert conv1.macs == 55 * 55 * 96 * (11 * 11 * 3)
    assert out_size(55, 3, 0, 2) == 27 and pool1.output_shape == (96, 27, 27)  # 27x27x96
    assert pool1.type == "MaxPool2d" and (pool1.kernel, pool1.stride) == ((3, 3), (2, 2))
    assert pool1.trainable_params == pool1.frozen_params == pool1.macs == 0
    assert summary.params == 62_378_344


def test_course_exercise_parameter_total():
    """32x32x3 -> conv 8 3x3 s1 same -> conv 16 5x5 s2 same -> flatten -> dense 512 -> dense 4."""
    _, summary = meta_summary("convnet_exercise", 3, 4, (32, 32))
    expected = (8 * 3 * 3 * 3 + 8) + (16 * 5 * 5 * 8 + 16) + (16 * 16 * 16 * 512 + 512) + (512 * 4 + 4)
    assert summary.params == summary.trainable_params == expected == 2_103_156
    weighted = [layer for layer in summary.layers if layer.trainable_params]
    assert [layer.trainable_params for layer in weighted] == [8 * 27 + 8, 16 * 200 + 16, 4096 * 512 + 512, 512 * 4 + 4]
    assert [layer.output_shape for layer in weighted] == [(8, 32, 32), (16, 16, 16), (512,), (4,)]
    # 'same' with stride 2 pads 3 pixels in all, 1 before and 2 after: the odd pixel goes bottom/right.
    pad = next(layer for layer in summary.layers if layer.type == "ZeroPad2d")
    assert pad.padding == (1, 2, 1, 2) and pad.output_shape == (8, 35, 35)
    assert summary.output_shape == (4,)


def convnet(*layers, channels=3, size=(32, 32), classes=10):
    cfg = OmegaConf.create({"name": "convnet", "layers": list(layers)})
    with torch.device("meta"):
        model = build_model(cfg, channels, classes, size)
    return summarize(model, (channels, *size))


def test_three_stacked_3x3_convs_see_7x7_like_one_7x7_with_fewer_weights():
    c = 64
    three = convnet(*[{"type": "conv", "filters": c, "kernel": 3} for _ in range(3)], channels=c)
    one = convnet({"type": "conv", "filters": c, "kernel": 7}, channels=c)
    convs = [layer for layer in three.layers if layer.type == "Conv2d"]
    assert [layer.receptive_field for layer in convs] == [(3, 3), (5, 5), (7, 7)]
    assert all(layer.jump == (1, 1) for layer in convs)
    assert one.layers[0].receptive_field == (7, 7)
    assert sum(layer.trainable_params for layer in convs) == 3 * (3 * 3 * c * c + c)
    assert one.layers[0].trainable_params == 7 * 7 * c * c + c


def test_receptive_field_is_the_formula_even_beyond_the_image():
    """Padding lets three 3x3 convs run on a 5x5 image; the reported r is the course formula's 7."""
    summary = convnet(*[{"type": "conv", "filters": 4, "kernel": 3} for _ in range(3)], {"type": "flatten"},
                      channels=1, size=(5, 5))
    assert [layer.receptive_field for layer in summary.layers if layer.type == "Conv2d"][-1] == (7, 7)
    assert summary.covers_input


def test_pooling_counts_like_any_layer():
    """r = 1 + sum (k_l - 1) prod_{i<l} s_i: conv 3/1, pool 2/2, conv 3/1 -> 1 + 2 + 1 + 2*2 = 8, jump 2."""
    summary = convnet({"type": "conv", "filters": 4, "kernel": 3}, {"type": "pool", "kernel": 2},
                      {"type": "conv", "filters": 4, "kernel": 3}, channels=1)
    assert [(layer.receptive_field, layer.jump) for layer in summary.layers if layer.jump] == [
        ((3, 3), (1, 1)), ((4, 4), (2, 2)), ((8, 8), (2, 2))]


# ---- published receptive fields --------------------------------------------------------------------------------
# Receptive field and jump at each layer's output (Krizhevsky et al. 2012 layout at 227x227; Simonyan & Zisserman
# configuration D at 224x224), as tabulated in the receptive-field arithmetic literature and in
# google-research/receptive_field (alexnet_v2 195, vgg_16 212, both with effective stride 32).
ALEXNET_RF = {"features.0": (11, 4), "features.3": (19, 8), "features.4": (51, 8), "features.7": (67, 16),
              "features.8": (99, 16), "features.10": (131, 16), "features.12": (163, 16), "features.14": (195, 32)}
VGG16_RF = {"features.0": (3, 1), "features.2": (5, 1), "features.4": (6, 2), "features.7": (14, 2),
            "features.9": (16, 4), "features.14": (40, 4), "features.16": (44, 8), "features.21": (92, 8),
            "features.23": (100, 16), "features.28": (196, 16), "features.30": (212, 32)}


@pytest.mark.parametrize("stem,size,published", [("alexnet", 227, ALEXNET_RF), ("vgg16", 224, VGG16_RF)])
def test_published_receptive_fields(stem, size, published):
    _, summary = meta_summary(stem, 3, 1000, (size, size))
    table = rows(summary)
    got = {name: (table[name].receptive_field[0], table[name].jump[0]) for name in published}
    assert got == published
    assert summary.feature_map["layer"] == max(published, key=lambda n: published[n][0])
    assert summary.feature_map["receptive_field"] == (published[summary.feature_map["layer"]][0],) * 2


def test_fully_connected_layer_is_a_window_over_the_whole_map():
    """VGG-16's fc6 is a 7x7 conv over pool5's 7x7 map of jump 32: 212 + (7 - 1) * 32 = 404."""
    _, summary = meta_summary("vgg16", 3, 1000, (224, 224))
    assert rows(summary)["classifier.0"].receptive_field == (404, 404)
    assert summary.receptive_field == (404, 404) and summary.covers_input


def test_inception_v3_receptive_field_takes_the_widest_branch():
    """google-research/receptive_field lists inception_v3 (299x299) at 1311 with effective stride 32."""
    _, summary = meta_summary("inception_v3", 3, 1000, (299, 299))
    assert summary.feature_map["receptive_field"] == (1311, 1311) and summary.feature_map["jump"] == (32, 32)
    assert summary.feature_map["layer"].startswith("Mixed_7c.")


# ---- branches, residuals, concatenations -------------------------------------------------------------------------
class TwoBranches(nn.Module):
    """A 3x3 and a 5x5 branch concatenated (Inception), then a 1x1 conv plus an identity shortcut (ResNet)."""

    def __init__(self):
        super().__init__()
        self.small = nn.Conv2d(1, 2, 3, padding=1)
        self.large = nn.Conv2d(1, 2, 5, padding=2)
        self.mix = nn.Conv2d(4, 4, 1)
        self.down = nn.Conv2d(4, 4, 3, stride=2, padding=1)

    def forward(self, x):
        y = torch.cat([self.small(x), self.large(x)], 1)
        y = F.relu(self.mix(y) + y)
        return F.max_pool2d(self.down(y), 2)


def test_concat_and_residual_take_the_largest_receptive_field():
    summary = summarize(TwoBranches(), (1, 16, 16))
    table = rows(summary)
    assert table["small"].receptive_field == (3, 3) and table["large"].receptive_field == (5, 5)
    assert table["mix"].receptive_field == (5, 5)  # 1x1 on the concatenation: max over the branches
    assert table["down"].receptive_field == (7, 7) and table["down"].jump == (2, 2)
    # The functional pool in forward() gets its own row and counts like any layer: 7 + (2 - 1) * 2 = 9.
    pool = table["max_pool2d"]
    assert pool.type == "F.max_pool2d" and pool.receptive_field == (9, 9) and pool.jump == (4, 4)
    assert pool.output_shape == (4, 4, 4) and summary.receptive_field == (9, 9)


def test_resnet_shortcuts_and_option_a_subsampling():
    _, summary = meta_summary("resnet20", 3, 10, (32, 32))
    table = rows(summary)
    # First block: conv-conv branch (3 -> 5 -> 7) added to the identity (3): the sum sees 7.
    assert table["stages.0.0.shortcut"].receptive_field == (3, 3)
    assert table["stages.0.0.act2"].receptive_field == (7, 7)
    # Option A takes every second pixel: the shortcut keeps r and doubles the jump.
    assert table["stages.1.0.shortcut"].receptive_field == (15, 15) and table["stages.1.0.shortcut"].jump == (2, 2)
    # Global average pooling over the 8x8 map of jump 4 is an 8x8 window: 81 + 7 * 4.
    assert table["pool"].receptive_field == (109, 109) and table["pool"].kernel == (8, 8)
    assert summary.feature_map["layer"] == "stages.2.2.conv2" and summary.feature_map["receptive_field"] == (81, 81)


def test_densenet_concatenations_grow_the_receptive_field():
    _, summary = meta_summary("densenet_bc100", 3, 10, (32, 32))
    convs = [layer for layer in summary.layers if layer.name.endswith("conv2")]
    # Each bottleneck's 3x3 conv adds 2 * jump; the transitions' functional 2x2 pools have rows of their own.
    assert convs[0].receptive_field == (5, 5) and convs[1].receptive_field == (7, 7)
    pools = [layer for layer in summary.layers if layer.type == "F.avg_pool2d"]
    assert [layer.output_shape[1:] for layer in pools] == [(16, 16), (8, 8)]
    assert all(layer.receptive_field[0] >= prev.receptive_field[0] for prev, layer in
               zip(summary.layers, summary.layers[1:]) if layer.executed and prev.executed and layer.jump)


# ---- every zoo entry -------------------------------------------------------------------------------------------
def _zoo_setting(stem: str, imagenet: bool):
    classes = 4 if stem == "convnet_exercise" else (1000 if imagenet else 10)
    if stem == "inception_v3":
        return 3, classes, (299, 299)
    if stem == "alexnet":
        return 3, classes, (227, 227)
    if stem == "alexnet_torchvision" and not imagenet:
        return 3, classes, (64, 64)
    return 3, classes, (224, 224) if imagenet else (32, 32)


@pytest.mark.parametrize("imagenet", [False, True], ids=["small", "imagenet"])
@pytest.mark.parametrize("stem", MODEL_CONFIGS)
def test_every_entry_parameters_add_up(stem, imagenet):
    if stem == "hub":
        pytest.skip("model=hub needs a repository; tests/test_backbones.py summarises one")
    if stem == "timm":
        pytest.importorskip("timm")
    channels, classes, size = _zoo_setting(stem, imagenet)
    model, summary = meta_summary(stem, channels, classes, size)
    total = sum(p.numel() for p in model.parameters())
    assert summary.params == total == summary.trainable_params
    assert sum(layer.trainable_params + layer.frozen_params for layer in summary.layers) == total
    assert summary.param_bytes == 4 * total
    assert summary.output_shape == (classes,)
    assert summary.macs > 0 and summary.activation_bytes > 0 and summary.covers_input
    if stem == "alexnet_torchvision" and not imagenet:  # its 6x6 average pool enlarges a 1x1 map at 64x64
        assert summary.notes == ["avgpool: adaptive pooling from 1x1 to 6x6 repeats positions; the receptive fields "
                                 "after it are upper bounds"]
    else:
        assert not summary.notes
    # Training-only layers (auxiliary classifiers) are listed, unrun, with their parameters.
    unrun = [layer for layer in summary.layers if not layer.executed]
    assert bool(unrun) == (stem in ("googlenet", "inception_v3"))
    assert all(layer.output_shape is None for layer in unrun)


CONV_LINEAR = [("lenet5", 1, (28, 28)), ("mlp", 1, (28, 28)), ("alexnet", 3, (227, 227)), ("alexnet_small", 3, (32, 32)),
               ("vgg11", 3, (32, 32)), ("vgg16", 3, (224, 224)), ("resnet20", 3, (32, 32)), ("resnet50", 3, (224, 224)),
               ("googlenet", 3, (32, 32)), ("densenet_bc100", 3, (32, 32)), ("convnet_exercise", 3, (32, 32))]


@pytest.mark.parametrize("stem,channels,size", CONV_LINEAR, ids=[c[0] for c in CONV_LINEAR])
def test_macs_agree_with_torch_flop_counter(stem, channels, size):
    model, summary = meta_summary(stem, channels, 4 if stem == "convnet_exercise" else 10, size)
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, channels, *size, device="meta"))
    assert summary.macs == pytest.approx(counter.get_total_flops() / 2, rel=1e-3)


def test_macs_agree_with_flop_counter_on_a_real_model():
    model = build_model(entry_cfg("lenet5"), 1, 10, (28, 28)).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 1, 28, 28))
    assert summarize(model, (1, 28, 28)).macs == counter.get_total_flops() / 2 == 416_520


def test_activation_memory_counts_new_tensors_only():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(32, 3))
    summary = summarize(model, (1, 4, 4))
    # conv output 2x4x4 floats; the in-place ReLU and the flattening view take nothing new; linear 3 floats.
    assert summary.activation_bytes == (2 * 4 * 4 + 3) * 4
    assert summary.buffer_bytes == 0 and summary.param_bytes == 4 * (2 * 9 + 2 + 32 * 3 + 3)


# ---- side effects and the real-model path ---------------------------------------------------------------------
def test_summary_of_a_real_model_matches_the_meta_build_and_leaves_it_untouched():
    torch.manual_seed(0)
    model = build_model(entry_cfg("resnet20"), 3, 10, (32, 32))
    model.train()
    model.stem[1].eval()  # as frozen batch norm is kept
    before = {k: v.clone() for k, v in model.state_dict().items()}
    summary = summarize(model, (3, 32, 32), "resnet20")
    _, on_meta = meta_summary("resnet20", 3, 10, (32, 32))
    assert summary.to_dict() == on_meta.to_dict()
    assert model.training and not model.stem[1].training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_frozen_parameters_are_reported_as_frozen():
    from cnnlab.engine.freezing import Freezer

    with torch.device("meta"):
        model = build_model(entry_cfg("lenet5"), 1, 10, (28, 28))
    Freezer(model, "backbone", 10).freeze()
    summary = summarize(model, (1, 28, 28))
    head = rows(summary)["classifier.5"]
    assert (head.trainable_params, head.frozen_params) == (84 * 10 + 10, 0)
    assert rows(summary)["features.0"].frozen_params == 156 and rows(summary)["features.0"].trainable_params == 0
    assert summary.trainable_params == 850 and summary.frozen_params == 61_706 - 850
    assert "850 trainable, 60,856 frozen" in summary.table()


# ---- input size: the zoo's check comes from the inspector -------------------------------------------------------
def test_too_small_input_names_the_layer():
    model = build_model(entry_cfg("alexnet_torchvision"), 1, 10, (64, 64))
    failure = first_failure(model, (1, 28, 28))
    assert failure.startswith("layer 'features.5' (MaxPool2d): ") and "too small" in failure
    with pytest.raises(LayerFailure, match=r"^layer 'features.5' \(MaxPool2d\): ") as info:
        summarize(model, (1, 28, 28))
    assert info.value.layer == "features.5" and info.value.kind == "MaxPool2d"
    assert smallest_square_input(lambda size: first_failure(model, (1, *size)) is None) == 63


def test_a_failing_functional_op_names_its_module_and_the_op():
    class Head(nn.Module):
        def forward(self, x):
            return F.max_pool2d(x, 4)

    model = nn.Sequential(nn.Conv2d(1, 2, 3), Head())
    assert first_failure(model, (1, 5, 5)).startswith("layer '1' (Head, in max_pool2d): ")
    assert first_failure(model, (1, 6, 6)) is None


# ---- the command line --------------------------------------------------------------------------------------------
def compose_summary(tmp_path, *overrides):
    from cnnlab.config.compose import compose_config

    return compose_config(list(overrides), tmp_path, config_name="summary")


@pytest.mark.parametrize("value,expected", [("40", ((1, 40, 40), 10)), ("[40,48]", ((1, 40, 48), 10)),
                                            ("[3,227,227]", ((3, 227, 227), 10))])
def test_input_size_override(tmp_path, value, expected):
    from cnnlab.cli.summary import summary_input
    from cnnlab.run.validate import validate

    assert summary_input(validate(compose_summary(tmp_path, f"input_size={value}"), "summary")) == expected


@pytest.mark.parametrize("override,message", [
    ("input_size=[1,2,3,4]", r"input_size=\[1, 2, 3, 4\] must be N .*, \[H, W\] or \[C, H, W\]"),
    ("num_classes=0", "num_classes=0 must be a positive integer"),
    ("format=xml", "format='xml' is not accepted; choose one of table, json"),
    ("model.name=resnet19", "model.name='resnet19' is not in the zoo; choose one of .*resnet18"),
])
def test_bad_summary_values(tmp_path, override, message):
    from cnnlab.cli.summary import build_summary

    with pytest.raises(ConfigError, match=message):
        build_summary(compose_summary(tmp_path, override))


def test_summary_config_composes_like_training(tmp_path):
    from cnnlab.config.compose import compose_config

    train = compose_config(["model=resnet20", "data=shapes", "finetune.freeze=backbone"], tmp_path)
    summary = compose_summary(tmp_path, "model=resnet20", "data=shapes", "finetune.freeze=backbone")
    for key in ("model", "data", "finetune", "trainer", "optimizer", "seed"):
        assert summary[key] == train[key], key
    assert summary.format == "table" and summary.input_size is None


def test_summary_through_the_config_freezes_the_backbone(tmp_path):
    from cnnlab.cli.summary import build_summary

    summary = build_summary(compose_summary(tmp_path, "finetune.freeze=backbone"))
    assert summary.frozen_params == 61_706 - 850 and summary.trainable_params == 850


def test_cli_table_and_json(run_cli, tmp_path):
    table = run_cli("summary", "model=alexnet", "input_size=[3,227,227]", "num_classes=1000", cwd=tmp_path)
    assert table.returncode == 0, table.stderr[-3000:]
    lines = table.stdout.splitlines()
    assert lines[0].startswith("alexnet on a 3x227x227 input")
    conv1 = next(line.split() for line in lines if line.startswith("features.0 "))
    assert conv1 == ["features.0", "Conv2d", "11x11", "4", "0", "96x55x55", "34,944", "0", "105,415,200", "11", "4"]
    assert any(line.startswith("parameters") and "62,378,344" in line for line in lines)

    done = run_cli("summary", "model=alexnet", "input_size=[3,227,227]", "num_classes=1000", "--json",
                   f"output={tmp_path / 'alexnet.json'}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads(done.stdout)
    assert json.loads((tmp_path / "alexnet.json").read_text()) == data
    assert data["input_shape"] == [3, 227, 227] and data["output_shape"] == [1000]
    assert data["totals"]["params"] == 62_378_344 and data["totals"]["frozen_params"] == 0
    layers = {layer["name"]: layer for layer in data["layers"]}
    assert layers["features.3"]["output_shape"] == [96, 27, 27] and layers["features.14"]["receptive_field"] == [195, 195]
    assert len(data["layers"]) == len([line for line in lines if line.startswith(("features.", "classifier."))])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alexnet.json"]  # no run dir, no log file


def test_cli_too_small_input_names_the_layer(run_cli, tmp_path):
    done = run_cli("summary", "model=alexnet_torchvision", cwd=tmp_path)  # the default data: 1x28x28 digits
    assert done.returncode == 2
    assert "error: model 'alexnet_torchvision' cannot take 1x28x28 inputs: layer 'features.5' (MaxPool2d)" in done.stderr
    assert "smallest square input it accepts is 63x63" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_cli_unknown_model_lists_the_zoo(run_cli, tmp_path):
    done = run_cli("summary", "model=resnet19", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "error: model=resnet19 is not in the zoo; choose one of alexnet, " in done.stderr
    assert all(stem in done.stderr for stem in MODEL_CONFIGS)


# ---- training logs the same summary --------------------------------------------------------------------------------
def test_training_writes_the_summary_to_the_run_dir(trained_run):
    run_dir, _ = trained_run
    model = build_model(entry_cfg("lenet5"), 1, 10, (28, 28))
    expected = summarize(model, (1, 28, 28), "lenet5")
    assert (run_dir / "model_summary.txt").read_text() == expected.table() + "\n"
    saved = json.loads((run_dir / "model_summary.json").read_text())
    assert saved.pop("world_size") == 1  # the run's number of processes (data-parallel training), beside the summary
    assert saved == json.loads(json.dumps(expected.to_dict()))


def test_training_summary_shows_frozen_parameters_and_totals_only(make_cfg, caplog):
    from cnnlab.run.lifecycle import prepare

    with caplog.at_level("INFO", logger="cnnlab"):
        run = prepare(make_cfg("finetune.freeze=backbone", "trainer.summary=totals", "logger=none"), overrides=[])
    data = json.loads((run.run_dir / "model_summary.json").read_text())
    assert data["totals"]["frozen_params"] == 61_706 - 850 and data["totals"]["trainable_params"] == 850
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "parameters            61,706 (61.71 K): 850 trainable, 60,856 frozen" in logged
    assert "features.0 " not in logged  # totals only on the console; the file has every layer
    assert "features.0 " in (run.run_dir / "model_summary.txt").read_text()


def test_training_summary_can_be_switched_off(make_cfg):
    from cnnlab.run.lifecycle import prepare

    run = prepare(make_cfg("trainer.summary=none", "logger=none"), overrides=[])
    assert not (run.run_dir / "model_summary.txt").exists()
    with pytest.raises(ConfigError, match="trainer.summary='some' is not accepted; choose one of full, totals, none"):
        prepare(make_cfg("trainer.summary=some", "logger=none"), overrides=[])


# ---- the guide shows the tool's real output ------------------------------------------------------------------------
def doc_examples():
    """(command-line args, printed lines) of every untrimmed `$ cnnlab-summary ...` table in docs/summary.md."""
    import shlex

    text = (Path(__file__).resolve().parents[1] / "docs" / "summary.md").read_text()
    examples = []
    for block in text.split("```")[1::2]:
        lines = block.strip("\n").splitlines()
        starts = [i for i, line in enumerate(lines) if line.startswith("$ cnnlab-summary")]
        for n, i in enumerate(starts):
            output = lines[i + 1: starts[n + 1] if n + 1 < len(starts) else len(lines)]
            while output and not output[-1]:
                output.pop()
            args = shlex.split(lines[i])[2:]
            if "..." not in output and "--json" not in args and output and not output[0].startswith("error:"):
                examples.append((args, output))
    return examples


GUIDE = doc_examples()


@pytest.mark.parametrize("args,printed", GUIDE, ids=[" ".join(args) for args, _ in GUIDE])
def test_guide_tables_are_the_tools_output(tmp_path, args, printed):
    from cnnlab.cli.summary import build_summary

    table = build_summary(compose_summary(tmp_path, *args)).table().splitlines()
    assert table[1:] == printed[1:]  # the title line names the config choice only under the CLI


def test_an_unknown_op_that_resizes_the_map_is_noted():
    class Upsample(nn.Module):
        def forward(self, x):
            return F.interpolate(nn.functional.relu(x), scale_factor=2)

    summary = summarize(nn.Sequential(nn.Conv2d(1, 2, 3), Upsample(), nn.Conv2d(2, 2, 3)), (1, 8, 8))
    assert [layer.output_shape for layer in summary.layers] == [(2, 6, 6), (2, 12, 12), (2, 10, 10)]
    assert summary.notes == ["1: interpolate changes the map size from 6x6 to 12x12; the inspector does not know "
                             "how, so the receptive field there is carried over unchanged"]
    assert summary.table().endswith("note: " + summary.notes[0])


def test_cli_output_that_is_a_directory_is_one_error_line(run_cli, tmp_path):
    done = run_cli("summary", "model=lenet5", f"output={tmp_path}", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: output={tmp_path} is a directory; give a file name") and \
        "Traceback" not in done.stderr
