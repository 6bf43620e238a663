"""cnnlab-eval and cnnlab-predict from a trained checkpoint, in process and through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cnnlab.data.sources import mnist_sample
from cnnlab.errors import ConfigError
from cnnlab.evaluate import evaluate
from cnnlab.predict import predict


def test_eval_reproduces_the_runs_test_metrics(trained_run, make_cfg, tmp_path):
    run_dir, metrics = trained_run
    overrides = [f"ckpt={run_dir}"]
    result = evaluate(make_cfg(*overrides, config_name="eval", run="eval"), overrides=overrides)
    assert result["test/acc"] == pytest.approx(metrics["test/acc"])
    assert result["test/loss"] == pytest.approx(metrics["test/loss"])
    assert result["images"] == 500
    saved = json.loads((tmp_path / "eval" / "eval_metrics.json").read_text())
    matrix = saved["test/confusion_matrix"]["matrix"]
    assert sum(map(sum, matrix)) == 500
    assert sum(matrix[i][i] for i in range(10)) / 500 == pytest.approx(metrics["test/acc"])
    assert set(saved["test/per_class_acc"]) == {str(d) for d in range(10)}


def test_eval_overrides_apply_on_top_of_the_saved_config(trained_run, make_cfg):
    run_dir, _ = trained_run
    overrides = [f"ckpt={run_dir}", "split=val", "data.eval_batch_size=7", "trainer.topk=[1,3]"]
    result = evaluate(make_cfg(*overrides, config_name="eval", run="eval2"), overrides=overrides)
    assert result["images"] == 500 and "val/acc_top3" in result and "val/acc" in result


def test_eval_rejects_a_missing_checkpoint(make_cfg, tmp_path):
    overrides = [f"ckpt={tmp_path / 'nope'}"]
    with pytest.raises(ConfigError, match="ckpt=.*nope: no such file or directory"):
        evaluate(make_cfg(*overrides, config_name="eval", run="eval3"), overrides=overrides)


@pytest.fixture(scope="module")
def digit_files(tmp_path_factory):
    images, labels = mnist_sample(None)
    folder = tmp_path_factory.mktemp("digits")
    paths, truth = [], []
    for i in range(0, 5000, 250):  # 20 digits, two of each class
        path = folder / f"digit_{i}.png"
        Image.fromarray(images[i, 0].numpy()).save(path)
        paths.append(str(path))
        truth.append(str(int(labels[i])))
    # An RGB, larger image must be converted and resized like the training data.
    rgb = folder / "rgb_big.png"
    Image.fromarray(np.repeat(images[0, 0].numpy()[:, :, None], 3, axis=2)).resize((56, 56)).save(rgb)
    return paths, truth, str(rgb)


def test_predict_labels_digits(trained_run, digit_files):
    run_dir, _ = trained_run
    paths, truth, rgb = digit_files
    results = predict(str(run_dir), paths + [rgb], topk=3, device="cpu")
    top1 = [r["top"][0]["label"] for r in results]
    assert sum(p == t for p, t in zip(top1, truth)) >= 16
    assert top1[-1] == truth[0]
    for r in results:
        probs = [t["prob"] for t in r["top"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001


def test_predict_cli_prints_topk(trained_run, digit_files, run_cli, tmp_path):
    run_dir, _ = trained_run
    paths, truth, _ = digit_files
    done = run_cli("predict", str(run_dir / "checkpoints" / "best.ckpt"), *paths[:2], "--topk", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(paths[0] + ": ")
    assert lines[0].count("(") == 2
    bad = run_cli("predict", str(run_dir), str(tmp_path / "missing.png"), cwd=tmp_path)
    assert bad.returncode == 2 and "missing.png: no such file" in bad.stderr


def test_eval_cli_writes_json_in_its_own_dir(trained_run, run_cli, tmp_path):
    run_dir, metrics = trained_run
    done = run_cli("evaluate", f"ckpt={run_dir}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    outputs = list((tmp_path / "outputs" / "eval").glob("*/*/eval_metrics.json"))
    assert len(outputs) == 1
    assert json.loads(outputs[0].read_text())["test/acc"] == pytest.approx(metrics["test/acc"])
    assert "confusion matrix" in done.stdout
