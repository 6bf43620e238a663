"""Testing a trained model on a split from its own saved config: the work of `cnnlab-eval` (cnnlab.cli.evaluate)
and of the Python API's Run.evaluate. Reports loss, top-1/top-k accuracy, per-class accuracy and the confusion
matrix, and writes them to eval_metrics.json in the evaluation's own output dir."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cnnlab.config.compose import hydra_overrides
from cnnlab.data import build_data
from cnnlab.engine.devices import check_precision, resolve_device, resolve_precision
from cnnlab.engine.checkpoint import find_checkpoint
from cnnlab.engine.task import reported_topk
from cnnlab.engine.evaluation import evaluate_split
from cnnlab.errors import ConfigError
from cnnlab.engine.losses import run_loss
from cnnlab.engine.metrics import precision_recall_f1
from cnnlab.run.weights import load_trained_model
from cnnlab.run.restore import built_parts, check_split_unchanged, saved_run_config
from cnnlab.run.rundir import claim
from cnnlab.util.outpaths import write_json
from cnnlab.config.checks import command_key_problems
from cnnlab.engine.tta import VIEWS, TTAModel, resolve_resize
from cnnlab.run.validate import fit_topk, known_classes, validate

log = logging.getLogger("cnnlab")

# Keys of eval.yaml itself, not of the saved run config.
EVAL_KEYS = ("ckpt", "split", "task_name", "tta", "tta_resize")

# The console shows the whole confusion matrix up to this many classes (20 columns of 5 characters beside the
# class names: about 130 characters wide). Beyond it, the most confused pairs are printed instead, and the
# matrix is in eval_metrics.json (and, for a training run's test pass, metrics.json and TensorBoard) only.
CONSOLE_MATRIX_MAX_CLASSES = 20
CONSOLE_CONFUSED_PAIRS = 10   # how many pairs, largest off-diagonal counts first


def evaluate(cfg: DictConfig, overrides: list[str] | None = None) -> dict:
    overrides = hydra_overrides() if overrides is None else overrides
    problems = command_key_problems(cfg, "eval")
    if problems:
        raise ConfigError(problems)
    path, ckpt = find_checkpoint(cfg.ckpt, "ckpt")
    split = str(cfg.split)
    # Evaluation never augments; it builds data and model only: the optimizer and scheduler in the saved config
    # are never built (the trust checks run before validation, which imports transform modules)
    _, run_cfg, keys = saved_run_config(cfg, ckpt, path, overrides, skip=EVAL_KEYS, fixed={"augment.transforms": []},
                                        untrusted_ok=("optimizer.", "scheduler."))
    check_split_unchanged(keys, cfg)
    typed = validate(built_parts(run_cfg))
    topk = fit_topk(run_cfg, known_classes(run_cfg), "trainer.topk" in keys)
    tcfg = typed.trainer.model_copy(update={"topk": topk})
    tta = str(cfg.tta)
    tta_resize = resolve_resize(tta, cfg.tta_resize, typed.data.input_size)
    out_dir = Path(OmegaConf.to_container(cfg.paths, resolve=True)["output_dir"])
    claim(out_dir, "eval", existing=str(cfg.paths.existing_run), task_cfg=cfg)

    device = resolve_device(tcfg.device)
    check_precision(tcfg.precision, device)
    loaded = load_trained_model(path, device, run_cfg, ckpt)
    data = build_data(typed.data, typed.seed, device, train_augment=False)
    info = loaded.info  # auto decides as training did on this device: by the model's size
    precision, _ = resolve_precision(tcfg.precision, device, loaded.model, (info.in_channels, *info.input_size),
                                     announce=True)

    model = loaded.model if tta == "none" else TTAModel(loaded.model, tta, typed.data.input_size, tta_resize)
    classes = list(loaded.info.classes)
    # the Trainer's test pass: the run's loss, weighted as in training (auto: the same training counts)
    loss = run_loss(tcfg, typed.data.sampler, data.class_counts, announce=False)
    report = evaluate_split(model, data.split(split), loss, split, classes, ks=reported_topk(tcfg.topk), device=device,
                            precision=precision)
    metrics, confusion = report.metrics, report.confusion
    if tta != "none" and tcfg.loss != "cross_entropy":  # the averaged softmax is no input for bce or mse
        metrics.pop(f"{split}/loss", None)
    result = {
        "checkpoint": str(path),
        "epoch": loaded.epoch,
        "split": split,
        "images": int(confusion.sum()),
        "tta": tta,
        "tta_views": VIEWS[tta],
        "tta_resize": tta_resize,
        "precision": precision.name,  # what trainer.precision (auto) resolved to on this device
        **metrics,
        **report.per_class,
        f"{split}/confusion_matrix": {"classes": classes, "matrix": confusion.tolist()},
    }
    write_json(result, out_dir / "eval_metrics.json")
    _print_report(result, split, classes, confusion, f"{out_dir / 'eval_metrics.json'}, key {split}/confusion_matrix")
    log.info("wrote %s", out_dir / "eval_metrics.json")
    return result


def _print_report(result: dict, split: str, classes, confusion, where: str) -> None:
    log.info("checkpoint %s (epoch %d), %s split: %d images", result["checkpoint"], result["epoch"], split,
             result["images"])
    if result["tta"] != "none":
        log.info("  test-time augmentation: %s (%d views%s, softmax averaged)", result["tta"], result["tta_views"],
                 f" of the image resized to {result['tta_resize'][0]}x{result['tta_resize'][1]}"
                 if result["tta_resize"] else "")
    for key, value in result.items():
        if key.startswith(f"{split}/") and isinstance(value, float):
            log.info("  %-24s %.4f", key, value)
    width = max(5, *(len(c) for c in classes))
    report = precision_recall_f1(confusion)
    cell = lambda v: "      n/a" if v is None else f"{v:9.4f}"  # noqa: E731
    log.info("  per class:")
    log.info("    %-*s %9s %9s %9s %9s %8s", width, "class", "accuracy", "precision", "recall", "F1", "support")
    for i, (name, acc) in enumerate(result[f"{split}/per_class_acc"].items()):
        log.info("    %-*s %s %s %s %s %8d", width, name, cell(acc), cell(report["precision"][i]),
                 cell(report["recall"][i]), cell(report["f1"][i]), report["support"][i])
    for line in confusion_lines(confusion, classes, where):
        log.info("  %s", line)


def confusion_lines(confusion, classes, where: str = "the metrics file",
                    max_classes: int = CONSOLE_MATRIX_MAX_CLASSES, pairs: int = CONSOLE_CONFUSED_PAIRS) -> list[str]:
    """The console's view of a confusion matrix (rows: true class): the whole matrix up to `max_classes`
    classes; beyond, the `pairs` largest off-diagonal counts (true -> predicted, count, share of the true
    class's samples), and a line saying `where` the whole matrix is."""
    classes = [str(c) for c in classes]
    rows = confusion.tolist()
    width = max(5, *(len(c) for c in classes))
    if len(classes) <= max_classes:
        return ["confusion matrix (rows: true, columns: predicted):",
                f"  {' ' * width} {' '.join(f'{c:>5}' for c in classes)}",
                *(f"  {name:<{width}} {' '.join(f'{v:5d}' for v in row)}" for name, row in zip(classes, rows))]
    off = sorted(((count, t, p) for t, row in enumerate(rows) for p, count in enumerate(row) if p != t and count > 0),
                 key=lambda c: (-c[0], c[1], c[2]))
    head = (f"confusion matrix: {len(classes)} classes (printed up to {max_classes}); the whole matrix: {where}")
    if not off:
        return [head, "no image was misclassified"]
    lines = [head, f"the {min(pairs, len(off))} most confused pairs (of {len(off)} with a mistake):",
             f"  {'true':<{width}} -> {'predicted':<{max(width, 9)}} {'count':>6} {'of true':>8}"]
    for count, t, p in off[:pairs]:
        total = sum(rows[t])
        lines.append(f"  {classes[t]:<{width}} -> {classes[p]:<{max(width, 9)}} {count:6d} {count / total:8.1%}")
    return lines
