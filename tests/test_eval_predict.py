"""cnnlab-eval and cnnlab-predict from a trained checkpoint, in process and through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cnnlab.data.sources import mnist_sample
from cnnlab.errors import ConfigError
from cnnlab.cli.evaluate import evaluate
from cnnlab.cli.predict import predict


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
    assert saved["precision"] == metrics["precision"]  # trainer.precision=auto decides as training did here


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


@pytest.mark.parametrize("override", ["seed=1", "data.split.val=0.3", "data.split.test=0.05"])
def test_eval_refuses_overrides_that_move_training_images_into_the_split(trained_run, make_cfg, override):
    run_dir, _ = trained_run
    overrides = [f"ckpt={run_dir}", override]
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=f"{key}=.* cannot be changed for evaluation: .*would put training "
                                          f"images into the test split"):
        evaluate(make_cfg(*overrides, config_name="eval", run="eval"), overrides=overrides)


def test_predict_classifies_every_image_in_a_directory(trained_run, digit_files, tmp_path):
    run_dir, _ = trained_run
    paths, truth, _ = digit_files
    folder = paths[0].rsplit("/", 1)[0]
    results = predict(str(run_dir), [folder], topk=1, device="cpu")
    assert [r["image"] for r in results] == sorted(paths + [digit_files[2]])
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(ConfigError, match="empty_dir is a directory with no image files in it"):
        predict(str(run_dir), [str(empty)])


def test_predict_names_its_own_device_option(trained_run, digit_files):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    run_dir, _ = trained_run
    with pytest.raises(ConfigError, match="^--device=cuda but CUDA is not available") as err:
        predict(str(run_dir), [digit_files[0][0]], device="cuda")
    assert "trainer.device" not in str(err.value)


def test_eval_and_predict_cli_on_a_checkpoint_of_the_wrong_shape(trained_run, digit_files, run_cli, tmp_path):
    """Its config a string (a null model section and the like: tests/test_untrusted_files.py, in process)."""
    import torch

    from cnnlab.engine.checkpoint import config_hash, load_checkpoint

    run_dir, _ = trained_run
    ckpt = load_checkpoint(run_dir / "checkpoints" / "best.ckpt")
    ckpt["config"] = "a string"
    ckpt["config_hash"] = config_hash(ckpt["config"])
    torch.save(ckpt, tmp_path / "odd.ckpt")
    for done in (run_cli("evaluate", f"ckpt={tmp_path / 'odd.ckpt'}", cwd=tmp_path),
                 run_cli("predict", str(tmp_path / "odd.ckpt"), digit_files[0][0], cwd=tmp_path)):
        assert done.returncode == 2, done.stderr[-2000:]
        out = done.stdout + done.stderr
        assert "error: " in out and "odd.ckpt is not a cnnlab checkpoint" in out and "Traceback" not in out


def test_the_console_prints_the_most_confused_pairs_instead_of_a_matrix_beyond_20_classes():
    import torch

    from cnnlab.run.scoring import CONSOLE_CONFUSED_PAIRS, CONSOLE_MATRIX_MAX_CLASSES, confusion_lines

    classes = [f"class_{i:02d}" for i in range(30)]
    matrix = torch.eye(30, dtype=torch.long) * 20
    matrix[3, 7], matrix[3, 3] = 8, 12      # class_03 -> class_07: 8 of 20
    matrix[12, 0], matrix[12, 12] = 5, 15   # class_12 -> class_00: 5 of 20
    matrix[29, 28], matrix[29, 29] = 1, 19
    lines = confusion_lines(matrix, classes, "eval_metrics.json, key test/confusion_matrix")
    assert len(lines) < 30 and max(len(line) for line in lines[1:]) < 60  # no 30x30 matrix
    assert lines[0] == ("confusion matrix: 30 classes (printed up to 20); the whole matrix: eval_metrics.json, "
                        "key test/confusion_matrix")
    assert lines[1] == "the 3 most confused pairs (of 3 with a mistake):"
    pairs = [line.split() for line in lines[3:]]
    assert pairs == [["class_03", "->", "class_07", "8", "40.0%"], ["class_12", "->", "class_00", "5", "25.0%"],
                     ["class_29", "->", "class_28", "1", "5.0%"]]
    # many mistakes: only the largest CONSOLE_CONFUSED_PAIRS, largest first
    noisy = torch.ones(30, 30, dtype=torch.long) + torch.diag(torch.full((30,), 50))
    noisy[5, 6] = 9
    lines = confusion_lines(noisy, classes)
    assert len(lines) == 3 + CONSOLE_CONFUSED_PAIRS and lines[3].split()[:4] == ["class_05", "->", "class_06", "9"]
    assert confusion_lines(torch.eye(30, dtype=torch.long), classes)[1] == "no image was misclassified"
    # up to the threshold: the whole matrix, a header line, the column names, one row per class
    small = confusion_lines(matrix[:CONSOLE_MATRIX_MAX_CLASSES, :CONSOLE_MATRIX_MAX_CLASSES],
                            classes[:CONSOLE_MATRIX_MAX_CLASSES])
    assert small[0] == "confusion matrix (rows: true, columns: predicted):"
    assert len(small) == 2 + CONSOLE_MATRIX_MAX_CLASSES and small[5].split()[0] == "class_03"
