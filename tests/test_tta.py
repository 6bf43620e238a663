"""Test-time augmentation in cnnlab-eval: tta=flip|five_crop|ten_crop average the views' softmax outputs."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.transforms.v2.functional import five_crop, ten_crop

from cnnlab.data import build_data
from cnnlab.engine.checkpoint import find_checkpoint
from cnnlab.errors import ConfigError
from cnnlab.cli.evaluate import evaluate
from cnnlab.run.weights import load_trained_model
from cnnlab.engine.tta import TTAModel, default_resize, resolve_resize
from cnnlab.config.typed import data_section


def hand_average(model, crops) -> torch.Tensor:
    """The mean of the softmax outputs of one forward pass per view."""
    with torch.no_grad():
        return torch.stack([model(c).softmax(dim=1) for c in crops]).mean(dim=0)


@pytest.fixture(scope="module")
def trained(trained_run):
    run_dir, _ = trained_run
    path, ckpt = find_checkpoint(run_dir, "ckpt")
    loaded = load_trained_model(path, torch.device("cpu"), ckpt=ckpt)
    data = build_data(data_section(loaded.cfg.data), int(loaded.cfg.seed), torch.device("cpu"), train_augment=False)
    return run_dir, loaded.model, data


def test_ten_crop_equals_the_mean_of_ten_forward_passes_by_hand(trained):
    _, model, data = trained
    x, _ = next(iter(data.test))
    x = x[:16]
    assert default_resize([28, 28]) == [32, 32]  # 224 of 256
    big = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    crops = ten_crop(big, [28, 28])  # torchvision's: 4 corners + centre, then the same of the mirror image
    assert len(crops) == 10
    with torch.no_grad():
        ours = TTAModel(model, "ten_crop", [28, 28], [32, 32])(x).exp()
    torch.testing.assert_close(ours, hand_average(model, crops), rtol=0, atol=1e-6)
    with torch.no_grad():
        five = TTAModel(model, "five_crop", [28, 28], [32, 32])(x).exp()
        flip = TTAModel(model, "flip", [28, 28])(x).exp()
    torch.testing.assert_close(five, hand_average(model, five_crop(big, [28, 28])), rtol=0, atol=1e-6)
    torch.testing.assert_close(flip, hand_average(model, [x, x.flip(-1)]), rtol=0, atol=1e-6)


def test_odd_margins_and_non_square_resize_crop_as_torchvision():
    """A centre crop with an odd margin is placed as torchvision places it, also for the mirrored image."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()
    x = torch.randn(6, 1, 8, 8)
    assert resolve_resize("ten_crop", None, [8, 8]) == [9, 9]
    big = F.interpolate(x, size=(11, 10), mode="bilinear", align_corners=False)
    with torch.no_grad():
        ours = TTAModel(model, "ten_crop", [8, 8], [11, 10])(x).exp()
    torch.testing.assert_close(ours, hand_average(model, ten_crop(big, [8, 8])), rtol=0, atol=1e-6)
    assert resolve_resize("five_crop", 16, [8, 12]) == [16, 24]  # N: the shorter side, aspect kept


def test_eval_ten_crop_reports_the_averaged_predictions(trained, make_cfg, tmp_path):
    run_dir, model, data = trained
    overrides = [f"ckpt={run_dir}", "tta=ten_crop"]
    result = evaluate(make_cfg(*overrides, config_name="eval", run="eval_tta"), overrides=overrides)
    probs, labels = [], []
    for x, y in data.test:
        big = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
        probs.append(hand_average(model, ten_crop(big, [28, 28])))
        labels.append(y)
    probs, labels = torch.cat(probs), torch.cat(labels)
    assert result["images"] == len(labels) == 500
    assert result["test/acc"] == int((probs.argmax(dim=1) == labels).sum()) / 500
    assert result["test/loss"] == pytest.approx(float(-probs[torch.arange(500), labels].log().mean()), rel=1e-4)
    saved = json.loads((tmp_path / "eval_tta" / "eval_metrics.json").read_text())
    assert (saved["tta"], saved["tta_views"], saved["tta_resize"]) == ("ten_crop", 10, [32, 32])
    assert "test/f1_macro" in saved and set(saved["test/per_class_f1"]) == {str(d) for d in range(10)}


@pytest.mark.parametrize("overrides, message", [
    (["tta=ten_crop", "tta_resize=[20,40]"], r"tta_resize=\[20, 40\]: the image resized to 20x40 is smaller than "
                                            r"the 28x28 crops \(data.input_size=\[28, 28\]\)"),
    (["tta=five_crop", "tta_resize=27"], r"tta_resize=27: the image resized to 27x27 is smaller"),
    (["tta_resize=40"], r"tta_resize=40: only the crop modes resize \(tta=five_crop or ten_crop\); tta=none"),
    (["tta=twelve_crop"], r"tta='twelve_crop' is not accepted; choose one of none, flip, five_crop, ten_crop"),
])
def test_bad_tta_settings_are_refused_before_any_output(trained_run, make_cfg, tmp_path, overrides, message):
    run_dir, _ = trained_run
    overrides = [f"ckpt={run_dir}", *overrides]
    with pytest.raises(ConfigError, match=message):
        evaluate(make_cfg(*overrides, config_name="eval", run="eval_bad"), overrides=overrides)
    assert not (tmp_path / "eval_bad").exists()



def test_side_problem_names_a_side_above_the_limit_and_passes_one_at_it():
    from cnnlab.config.limits import MAX_SIDE, side_problem

    assert side_problem("data.input_size", [MAX_SIDE, 28], [MAX_SIDE, 28]) is None
    line = side_problem("tta_resize", MAX_SIDE + 1, [MAX_SIDE + 1, 30])
    assert line.startswith(f"tta_resize={MAX_SIDE + 1} is larger than cnnlab accepts")
    assert line.endswith("resize or tile the images")
