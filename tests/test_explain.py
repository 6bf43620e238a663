"""cnnlab-explain: every picture for a LeNet and a ResNet-20 run, Grad-CAM on the region that decides the class,
and one clear error for each kind of bad input."""

from __future__ import annotations

import shutil

import pytest
import torch
from PIL import Image

from cnnlab.data import build_data
from cnnlab.engine.checkpoint import find_checkpoint
from cnnlab.cli.explain import explain, main
from cnnlab.run.weights import load_trained_model
from cnnlab.run.lifecycle import train
from cnnlab.visualize.figures import denormalize
from cnnlab.visualize.gradcam import gradcam_maps
from cnnlab.visualize.layer_probe import default_gradcam_layer, probe_layers
from cnnlab.config.typed import data_section
from conftest import compose_cfg

LENET_PICTURES = {"filters_features.0", "feature_maps_features.0", "feature_maps_features.3", "gradcam", "mistakes"}


@pytest.fixture
def lenet_run(trained_run, tmp_path):
    """A copy of the shared LeNet run: explain writes into a run's dir and event files."""
    run_dir, _ = trained_run
    return shutil.copytree(run_dir, tmp_path / "lenet")


def tensorboard_images(run_dir) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # a second of imports

    tags = set()
    for events in run_dir.glob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events), size_guidance={"images": 0})
        accumulator.Reload()
        tags |= set(accumulator.Tags()["images"])
    return tags


def assert_pictures(files, expected: set[str]) -> None:
    assert {f.stem for f in files} == expected
    for f in files:
        with Image.open(f) as image:
            assert image.format == "PNG" and min(image.size) >= 100, f


def test_explain_writes_every_picture_of_a_lenet_run_and_the_same_in_tensorboard(lenet_run):
    result = explain(str(lenet_run), n_images=4, device="cpu")
    assert result.out_dir == lenet_run / "explain"
    assert_pictures(result.files, LENET_PICTURES)
    assert {"explain/" + name for name in LENET_PICTURES} <= tensorboard_images(lenet_run)
    # Run again with a named layer: its pictures replace the first run's in TensorBoard, not pile up beside them.
    again = explain(str(lenet_run), layers=["features.3"], n_images=2, device="cpu")
    assert {f.stem for f in again.files} == {"filters_features.3", "feature_maps_features.3", "gradcam", "mistakes"}
    assert len(list(lenet_run.glob("events.out.tfevents.*.explain"))) == 1
    assert "explain/filters_features.0" not in tensorboard_images(lenet_run)


def test_explain_takes_the_users_image_files(lenet_run, tmp_path):
    digit = tmp_path / "digit.png"
    Image.new("L", (40, 40), 0).save(digit)  # a different size: resized as cnnlab-predict does
    result = explain(str(lenet_run), images=[str(digit)], out=str(tmp_path / "pictures"), device="cpu")
    assert result.out_dir == tmp_path / "pictures" and {f.parent for f in result.files} == {result.out_dir}
    assert_pictures(result.files, LENET_PICTURES)


@pytest.mark.slow  # the LeNet run's pictures are the default run's; a residual network's take 5 s more
def test_explain_writes_every_picture_of_a_resnet20_run(tmp_path):
    run_dir = tmp_path / "resnet20"
    cfg = compose_cfg(run_dir, "trainer.progress=none", "model=resnet20", "data=fake", "augment=none",
                      "trainer.max_epochs=1", "trainer.limit_train_batches=1", "trainer.summary=none")
    train(cfg, overrides=[])
    result = explain(str(run_dir), n_images=3, device="cpu")
    # Filters of the stem, feature maps of the first, a middle and the last conv, Grad-CAM at the last block.
    assert_pictures(result.files, {"filters_stem.0", "feature_maps_stem.0", "feature_maps_stages.1.1.conv1",
                                   "feature_maps_stages.2.2.conv2", "gradcam", "mistakes"})
    model = load_trained_model(*find_checkpoint(run_dir, "run_dir")[:1], torch.device("cpu")).model
    assert default_gradcam_layer(probe_layers(model, 3, (32, 32), "cpu")).name == "stages.2.2"


# A small network of the class-activation-map kind (3 conv blocks, global average pooling, one linear layer):
# it learns four shapes to ~70% test accuracy in ~10 s of CPU time.
SHAPES_NET = ("model.layers=["
              "{type:conv,filters:16,kernel:3,padding:same},{type:batchnorm},{type:activation,name:relu},"
              "{type:pool,kind:max,kernel:2},"
              "{type:conv,filters:32,kernel:3,padding:same},{type:batchnorm},{type:activation,name:relu},"
              "{type:pool,kind:max,kernel:2},"
              "{type:conv,filters:32,kernel:3,padding:same},{type:batchnorm},{type:activation,name:relu},"
              "{type:pool,kind:avg,kernel:8},{type:flatten},{type:dense,units:4}]")


def shape_regions(images: torch.Tensor) -> torch.Tensor:
    """(N, H, W) masks of where each shape lies: pixels differing from the background colour (the generator
    keeps every shape inside the frame, so the border is background; the shape differs from it by at least
    0.4 in mean brightness, the noise by 0.08), widened by 2 pixels: an 8x8 Grad-CAM cell covers 4x4 pixels."""
    border = torch.cat([images[:, :, 0, :], images[:, :, -1, :], images[:, :, :, 0], images[:, :, :, -1]], dim=2)
    background = border.median(dim=2).values[:, :, None, None]
    shape = ((images - background).abs().mean(dim=1) > 0.2).float()
    return torch.nn.functional.max_pool2d(shape[:, None], 5, stride=1, padding=2)[:, 0]


@pytest.mark.slow  # ten epochs: a model that has learned the shapes is what Grad-CAM is checked on
def test_gradcam_puts_most_of_its_mass_on_the_shape_that_decides_the_class(tmp_path):
    run_dir = tmp_path / "shapes"
    cfg = compose_cfg(run_dir, "trainer.progress=none", "data=shapes", "data.num_samples=2400",
                      "data.class_subset=[0,2,4,5]", "augment=none", "model=convnet", SHAPES_NET,
                      "trainer.max_epochs=10", "optimizer.lr=0.01", "logger=none", "trainer.summary=none")
    train(cfg, overrides=[])
    loaded = load_trained_model(*find_checkpoint(run_dir, "run_dir")[:1], torch.device("cpu"))
    data = build_data(data_section(loaded.cfg.data), int(loaded.cfg.seed), torch.device("cpu"), train_augment=False)
    inputs, labels = next(iter(data.test))
    layer = default_gradcam_layer(probe_layers(loaded.model, 3, (32, 32), "cpu"))
    with torch.no_grad():
        predicted = loaded.model(inputs).argmax(dim=1)
    heat = gradcam_maps(loaded.model, layer.module, inputs, predicted)
    regions = shape_regions(denormalize(inputs, loaded.info.mean, loaded.info.std))
    on_shape = (heat * regions).sum(dim=(1, 2)) / heat.sum(dim=(1, 2)).clamp_min(1e-12)
    chance = float(regions.mean())  # the mass an evenly spread map would put on the regions: ~0.4
    assert (predicted == labels).float().mean() > 0.5  # the model has learned something to explain (measured 0.72)
    # Measured on the 120 test images: median 0.63 (1.6x chance), 64% of the images above one half.
    assert float(on_shape.median()) > max(0.5, 1.4 * chance)
    assert float((on_shape > 0.5).float().mean()) > 0.5


def cli_error(capsys, caplog, *argv: str) -> str:
    """The one error line of `cnnlab-explain argv` (stderr, or the log when an earlier test set up logging)."""
    caplog.clear()
    with pytest.raises(SystemExit, match="^2$") as exit_:
        main(list(argv))
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines() + [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_a_run_dir_without_checkpoint_is_one_clear_error(capsys, caplog, tmp_path):
    assert "no checkpoint in that directory" in cli_error(capsys, caplog, str(tmp_path), "--device", "cpu")


def test_an_unknown_layer_lists_the_conv_layers(capsys, caplog, lenet_run):
    err = cli_error(capsys, caplog, str(lenet_run), "--layer", "features.9", "--device", "cpu")
    assert "--layer=features.9: the model has no layer of that name" in err
    assert err.endswith("its conv layers are: features.0, features.3")
    err = cli_error(capsys, caplog, str(lenet_run), "--gradcam-layer", "nope", "--device", "cpu")
    assert "--gradcam-layer=nope" in err and "features.3" in err


def test_filters_of_a_layer_that_is_not_a_conv_are_refused(capsys, caplog, lenet_run):
    err = cli_error(capsys, caplog, str(lenet_run), "--layer", "classifier.1", "--device", "cpu")
    assert "--layer=classifier.1 is a Linear, not a conv layer" in err and "features.0, features.3" in err
    err = cli_error(capsys, caplog, str(lenet_run), "--gradcam-layer", "classifier.1", "--device", "cpu")
    assert "not feature maps" in err


def test_an_image_that_cannot_be_read_is_named(capsys, caplog, lenet_run, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")
    err = cli_error(capsys, caplog, str(lenet_run), str(broken), "--device", "cpu")
    assert f"image {broken} cannot be read as an image" in err
    assert not (lenet_run / "explain").exists()  # refused before anything was drawn
    assert "--images=0" in cli_error(capsys, caplog, str(lenet_run), "--images", "0")
