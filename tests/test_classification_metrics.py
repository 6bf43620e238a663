"""Precision, recall and F1 (per class, macro, weighted) from the confusion matrix, checked against scikit-learn."""

from __future__ import annotations

import json

import pytest
import torch
from sklearn.metrics import precision_recall_fscore_support

from cnnlab.data import build_data
from cnnlab.engine.checkpoint import find_checkpoint
from cnnlab.cli.evaluate import evaluate
from cnnlab.engine.metrics import classification_metrics, confusion_matrix, precision_recall_f1
from cnnlab.run.weights import load_trained_model
from cnnlab.config.typed import data_section


def sklearn_scores(y_true, y_pred, average):
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average=average, zero_division=0)
    return p, r, f


def test_equal_to_sklearn_with_unpredicted_and_absent_classes():
    g = torch.Generator().manual_seed(0)
    y_true = torch.randint(0, 6, (400,), generator=g)
    y_pred = torch.where(torch.rand(400, generator=g) < 0.5, y_true, torch.randint(0, 6, (400,), generator=g))
    y_pred[y_pred == 2] = 3          # class 2 has samples but is never predicted: precision 0
    y_true[y_true == 4] = 1          # class 4 is predicted but has no samples: recall 0
    y_true[y_true == 5] = 0          # class 5 and class 6 appear nowhere: None, outside the macro mean
    y_pred[y_pred == 5] = 0
    report = precision_recall_f1(confusion_matrix(y_pred, y_true, 7))
    p, r, f = sklearn_scores(y_true.numpy(), y_pred.numpy(), None)  # its labels: those in y_true or y_pred
    assert report["precision"][:5] == pytest.approx(list(p), abs=1e-12)
    assert report["recall"][:5] == pytest.approx(list(r), abs=1e-12)
    assert report["f1"][:5] == pytest.approx(list(f), abs=1e-12)
    assert report["precision"][2] == 0 and report["recall"][4] == 0 and report["f1"][4] == 0
    assert report["precision"][5:] == report["recall"][5:] == report["f1"][5:] == [None, None]
    for average in ("macro", "weighted"):
        ours = report[average]
        assert (ours["precision"], ours["recall"], ours["f1"]) == pytest.approx(
            sklearn_scores(y_true.numpy(), y_pred.numpy(), average), abs=1e-12), average
    assert report["weighted"]["recall"] == pytest.approx(float((y_true == y_pred).float().mean()))


def test_shards_summed_give_the_whole_splits_scores():
    """Under DDP each process counts its shard and the confusion matrices are summed: the scores are exact."""
    g = torch.Generator().manual_seed(1)
    y_true, y_pred = torch.randint(0, 4, (101,), generator=g), torch.randint(0, 4, (101,), generator=g)
    summed = confusion_matrix(y_pred[:50], y_true[:50], 4) + confusion_matrix(y_pred[50:], y_true[50:], 4)
    averages, _ = classification_metrics(summed, list("abcd"), "test")
    p, r, f = sklearn_scores(y_true.numpy(), y_pred.numpy(), "macro")
    assert (averages["test/precision_macro"], averages["test/recall_macro"], averages["test/f1_macro"]) == \
        pytest.approx((p, r, f), abs=1e-12)


def test_empty_confusion_matrix_has_no_means():
    averages, per_class = classification_metrics(torch.zeros(3, 3, dtype=torch.long), ["a", "b", "c"], "val")
    assert averages == {}
    assert per_class["val/per_class_f1"] == {"a": None, "b": None, "c": None}


def test_run_metrics_equal_sklearn_on_the_runs_test_predictions(trained_run):
    """metrics.json's test/* scores are scikit-learn's on the predictions of the tested (best) weights."""
    run_dir, metrics = trained_run
    path, ckpt = find_checkpoint(run_dir, "ckpt")
    loaded = load_trained_model(path, torch.device("cpu"), ckpt=ckpt)
    data = build_data(data_section(loaded.cfg.data), int(loaded.cfg.seed), torch.device("cpu"), train_augment=False)
    y_true, y_pred = [], []
    with torch.inference_mode():
        for x, y in data.test:
            y_pred.append(loaded.model(x).argmax(dim=1))
            y_true.append(y)
    y_true, y_pred = torch.cat(y_true).numpy(), torch.cat(y_pred).numpy()
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))  # what train() returned is what it wrote
    for average in ("macro", "weighted"):
        p, r, f = sklearn_scores(y_true, y_pred, average)
        assert saved[f"test/precision_{average}"] == pytest.approx(p, abs=1e-9)
        assert saved[f"test/recall_{average}"] == pytest.approx(r, abs=1e-9)
        assert saved[f"test/f1_{average}"] == pytest.approx(f, abs=1e-9)
    p, r, f = sklearn_scores(y_true, y_pred, None)
    classes = [str(c) for c in range(10)]
    assert list(saved["test/per_class_precision"]) == classes
    assert [saved["test/per_class_precision"][c] for c in classes] == pytest.approx(list(p), abs=1e-9)
    assert [saved["test/per_class_recall"][c] for c in classes] == pytest.approx(list(r), abs=1e-9)
    assert [saved["test/per_class_f1"][c] for c in classes] == pytest.approx(list(f), abs=1e-9)


def test_eval_reports_the_same_scores_as_the_run(trained_run, make_cfg, tmp_path):
    """cnnlab-eval on the same weights and split: the same averages and per-class scores in eval_metrics.json."""
    run_dir, metrics = trained_run
    overrides = [f"ckpt={run_dir}"]
    evaluate(make_cfg(*overrides, config_name="eval", run="eval"), overrides=overrides)
    saved = json.loads((tmp_path / "eval" / "eval_metrics.json").read_text())
    for key in ("test/precision_macro", "test/recall_macro", "test/f1_macro", "test/precision_weighted",
                "test/recall_weighted", "test/f1_weighted"):
        assert saved[key] == pytest.approx(metrics[key], abs=1e-12), key
    for key in ("test/per_class_precision", "test/per_class_recall", "test/per_class_f1"):
        assert saved[key] == pytest.approx(metrics[key], abs=1e-12), key
