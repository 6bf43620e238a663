"""cnnlab-export: ONNX, TorchScript and torch.export files that run without cnnlab and agree with the model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from cnnlab.data.bundle import DataInfo
from cnnlab.data.loaders import Normalize
from cnnlab.data.sources import mnist_sample
from cnnlab.engine.checkpoint import find_checkpoint
from cnnlab.errors import ConfigError
from cnnlab.cli.export import FORMATS, export, export_model, load_exported, main
from cnnlab.run.weights import load_trained_model

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    """The shared run exported once in each format."""
    run_dir, _ = trained_run
    out = tmp_path_factory.mktemp("export")
    return {fmt: export(str(run_dir), fmt, str(out / FORMATS[fmt])) for fmt in FORMATS}


@pytest.fixture(scope="module")
def real_images(trained_run, tmp_path_factory):
    """30 MNIST digits saved as PNG files and read back through cnnlab-predict's preprocessing (uint8, 1x28x28),
    and the trained model's logits for them as cnnlab computes them (normalised as in training)."""
    from PIL import Image

    from cnnlab.data.image_input import load_image

    run_dir, _ = trained_run
    images, _ = mnist_sample(None)
    folder = tmp_path_factory.mktemp("pngs")
    batch = []
    for i in range(0, 4500, 150):
        path = folder / f"{i}.png"
        Image.fromarray(images[i, 0].numpy()).save(path)
        batch.append(load_image(path, 1, (28, 28)))
    batch = torch.stack(batch)
    path, ckpt = find_checkpoint(run_dir, "ckpt")
    loaded = load_trained_model(path, torch.device("cpu"), ckpt=ckpt)
    normalize = Normalize(loaded.info.mean, loaded.info.std, "cpu")
    with torch.no_grad():
        expected = loaded.model(normalize(batch.float()))
    return batch, expected


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_exported_model_agrees_with_pytorch_on_real_images(exported, real_images, fmt):
    batch, expected = real_images
    run = load_exported(fmt, exported[fmt]["path"])  # onnxruntime, torch.jit.load or torch.export.load
    got = run(batch.float() / 255)  # the exported convention: pixel values / 255, normalisation inside
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(run(batch[:1].float() / 255), expected[:1], rtol=0, atol=1e-5)  # any batch size
    assert (got.argmax(dim=1) == expected.argmax(dim=1)).all()
    assert exported[fmt]["check_max_abs_diff"] < 1e-5


def test_description_beside_the_model(exported, trained_run):
    run_dir, _ = trained_run
    for fmt, result in exported.items():
        description = json.loads(open(result["path"] + ".json").read())
        assert description["format"] == fmt and description["file"] == FORMATS[fmt]
        assert description["classes"] == [str(d) for d in range(10)] and description["num_classes"] == 10
        assert description["input"]["shape"] == ["batch", 1, 28, 28]
        assert description["input"]["channels"] == 1 and description["input"]["size"] == [28, 28]
        assert (description["input"]["dtype"], description["input"]["range"]) == ("float32", [0.0, 1.0])
        assert description["normalisation_folded_in"]["mean"] == pytest.approx([0.1307])
        assert description["checkpoint"].endswith("best.ckpt") and description["model"] == "lenet5"


@pytest.mark.slow  # a fresh interpreter per format; the default run checks the exported files in this process
def test_exported_files_run_without_cnnlab(exported, real_images, tmp_path):
    """A fresh interpreter in which `import cnnlab` fails loads all three files with their runtimes only."""
    batch, expected = real_images
    torch.save(batch.float() / 255, tmp_path / "x.pt")
    paths = {fmt: exported[fmt]["path"] for fmt in FORMATS}
    script = f"""
import sys
sys.modules["cnnlab"] = None  # any import of cnnlab now raises ImportError
import numpy as np, onnxruntime, torch
x = torch.load({str(tmp_path / 'x.pt')!r})
paths = {paths!r}
session = onnxruntime.InferenceSession(paths["onnx"], providers=["CPUExecutionProvider"])
outs = [torch.from_numpy(session.run(None, {{"image": x.numpy()}})[0]),
        torch.jit.load(paths["torchscript"])(x),
        torch.export.load(paths["exported"]).module()(x)]
torch.save(torch.stack(outs), {str(tmp_path / 'y.pt')!r})
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    for got in torch.load(tmp_path / "y.pt"):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


class Gate(nn.Module):
    """Data-dependent control flow: which branch runs depends on the values, which tracing cannot capture."""

    def forward(self, x):
        return x if x.mean() > 0 else -x


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), Gate())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 6 * 6, 3))

    def forward(self, x):
        return self.head(self.features(x))


@pytest.mark.parametrize("fmt", ["onnx", "exported"])
def test_untraceable_layer_is_named(tmp_path, fmt):
    info = DataInfo("toy", 1, 3, (8, 8), ("a", "b", "c"), (0.5,), (0.25,))
    with pytest.raises(ConfigError, match=rf"--format={fmt}: layer 'features.2' \(Gate\) cannot be exported: "
                                          r"Could not guard on data-dependent expression.*x.mean\(\) > 0"):
        export_model(Untraceable(), info, fmt, tmp_path / FORMATS[fmt])
    assert list(tmp_path.iterdir()) == []  # nothing half-written is left


def test_cli_exports(trained_run, tmp_path, capsys):
    run_dir, _ = trained_run
    main([str(run_dir / "checkpoints" / "last.ckpt"), "--format", "torchscript", "--out", str(tmp_path / "m.pt")])
    assert (tmp_path / "m.pt").is_file() and (tmp_path / "m.pt.json").is_file()
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'm.pt'} (torchscript)" in out and "check: max |logit difference|" in out


def test_cli_refuses_a_run_dir_without_checkpoint(run_cli, tmp_path):
    empty = tmp_path / "not_a_run"
    empty.mkdir()
    bad = run_cli("export", str(empty), "--format", "onnx", cwd=tmp_path)
    assert bad.returncode == 2
    assert f"error: checkpoint={empty}: no checkpoint in that directory" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_default_out_is_the_run_dirs_export_folder(trained_run, tmp_path):
    import shutil

    run_dir, _ = trained_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir / "checkpoints", copy / "checkpoints")
    result = export(str(copy), "torchscript")
    assert result["path"] == str(copy / "export" / "model.torchscript.pt")
    with pytest.raises(ConfigError, match="--format=keras: choose one of onnx, torchscript, exported"):
        export(str(copy), "keras")
