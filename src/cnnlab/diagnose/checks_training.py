"""Checks that train a copy of the model: output layer, initial loss, overfitting one small batch, whether the
labels carry signal, and the learning-rate range test.

Each takes the Subject and a Workspace (where plots go, what earlier checks left for later ones) and returns
its Check(s); cnnlab.diagnose.checklist runs them in order and turns an exception into a FAIL.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from cnnlab.diagnose.lr_finder import lr_range_test, plot_lr_range, suggestion_override
from cnnlab.diagnose.doctor_plots import plot_overfit
from cnnlab.diagnose.report import Check
from cnnlab.diagnose.subject import Subject


def _fmt(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def _output_problem(subject: Subject, logits: torch.Tensor) -> str | None:
    k = subject.info.num_classes
    if logits.ndim != 2 or logits.shape[1] != k:
        return (f"the model outputs shape {tuple(logits.shape)} for a batch of {logits.shape[0]}, but the data has "
                f"{k} classes: expected ({logits.shape[0]}, {k})")
    return None


def output_layer(subject: Subject, work) -> Check:
    """The last layer gives one logit per class, and finite ones."""
    model, _ = subject.fresh()
    x, _ = subject.batches(1)[0]
    model.eval()
    with torch.no_grad():
        logits = subject.logits(model, x[:8])
    k = subject.info.num_classes
    problem = _output_problem(subject, logits)
    if problem:
        return Check("output layer", "FAIL", problem, advice=(
            f"make the model's last layer {k} wide (one output per class of data.num_classes={k}); e.g. the "
            f"last dense layer's units in the model config"), values={"shape": list(logits.shape), "classes": k})
    if not torch.isfinite(logits).all():
        return Check("output layer", "FAIL", "the model outputs NaN/Inf at initialisation",
                     advice="check the model's init (model.init) and any division or log in its forward pass")
    return Check("output layer", "PASS", f"{k} outputs for {k} classes", values={"classes": k})


def initial_loss(subject: Subject, work) -> Check:
    """The loss before any step vs a uniform prediction's (ln(classes) for cross-entropy)."""
    model, _ = subject.fresh()
    batches = subject.batches(2)
    model.train()  # as the first training step sees it (batch norm on batch statistics)
    with torch.no_grad():
        total = expected = 0.0
        for x, y in batches:
            logits = subject.logits(model, x)
            problem = _output_problem(subject, logits)
            if problem:
                return Check("initial loss", "FAIL", f"not measured: {problem}",
                             advice="fix the output layer first (see 'output layer')")
            total += subject.loss(logits, y).item()
            expected += subject.loss(torch.zeros_like(logits), y).item()
    loss, expected = total / len(batches), expected / len(batches)
    name = subject.loss.name
    reference = f"ln({subject.info.num_classes})" if name == "cross_entropy" else "a uniform prediction's"
    off = abs(loss - expected) / expected if expected > 0 else math.inf
    tolerance = float(subject.settings.init_loss_tolerance)
    measured = f"{_fmt(loss)} vs {reference} = {_fmt(expected)} ({off:.0%} off)"
    values = {"loss": loss, "expected": expected, "relative_difference": off}
    if off <= tolerance:
        return Check("initial loss", "PASS", measured, values=values)
    if not math.isfinite(loss) or loss > expected:
        advice = ("the untrained model is confidently wrong: the output layer's weights are too large (try "
                  "model.init=xavier or a smaller init of the last layer), or the last layer has more outputs "
                  "than there are classes")
    else:
        advice = ("lower than chance before training: the labels are predictable without learning (one class "
                  "dominates the batches? labels leaking into the inputs?)")
    status = "WARN" if off <= 2 * tolerance else "FAIL"
    return Check("initial loss", status, measured, advice=advice, values=values)


def _no_dropout(model: nn.Module) -> int:
    """Set every dropout probability to 0 (train mode stays on: batch norm behaves as in training)."""
    changed = 0
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0:
            m.p = 0.0
            changed += 1
    return changed


def _accuracy(subject: Subject, model, batches) -> float:
    with torch.no_grad():
        hits = sum((subject.logits(model, x).argmax(1) == y).sum().item() for x, y in batches)
    return hits / sum(len(y) for _, y in batches)


def overfit(subject: Subject, work) -> list[Check]:
    """Memorise a few un-augmented batches with regularisation off; then ask whether val accuracy beats chance."""
    s = subject.settings.overfit
    model, optimizer = subject.fresh(weight_decay=0.0)
    dropouts = _no_dropout(model)
    batches = subject.batches(int(s.batches))
    n = sum(len(y) for _, y in batches)
    what = (f"{n} un-augmented images in {len(batches)} batch{'es' if len(batches) > 1 else ''}; dropout off, "
            f"weight decay 0, constant lr={subject.lr:g}")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total_params = sum(p.numel() for p in model.parameters())
    model.train()
    losses, accs, acc, steps = [], [], 0.0, 0
    for steps in range(1, int(s.steps) + 1):
        x, y = batches[(steps - 1) % len(batches)]
        loss = subject.loss(subject.logits(model, x), y)
        losses.append(loss.item())
        if not math.isfinite(losses[-1]) or losses[-1] > 100 * losses[0]:
            break  # diverged: more steps would tell nothing new
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if steps % 10 == 0 or steps == int(s.steps):
            acc = _accuracy(subject, model, batches)
            accs.append((steps, acc))
            if acc >= float(s.target_acc):
                break
    first, last = losses[0], losses[-1]
    peak = max(losses, key=lambda v: v if math.isfinite(v) else math.inf)  # a NaN counts as the highest
    values = {"images": n, "batches": len(batches), "steps": steps, "accuracy": acc, "first_loss": first,
              "last_loss": last, "peak_loss": peak, "lr": subject.lr, "dropout_layers_off": dropouts,
              "trainable_params": trainable, "params": total_params}
    plot = plot_overfit(losses, accs, float(s.target_acc), work.path("overfit.png"),
                        f"Overfit: {what}")
    work.figure("overfit", plot)
    check = _overfit_check(subject, values, what, plot)
    if check.status == "PASS":
        return [check, label_signal(subject, model, values)]
    return [check]


def _overfit_check(subject: Subject, v: dict, what: str, plot) -> Check:
    first, last, lr = v["first_loss"], v["last_loss"], subject.lr
    story = f"train acc {v['accuracy']:.2f} after {v['steps']} steps, loss {_fmt(first)} -> {_fmt(last)} ({what})"
    target = float(subject.settings.overfit.target_acc)
    plots = [str(plot)]
    if v["accuracy"] >= target:
        return Check("overfit one batch", "PASS", f"memorised: {story}", values=v, plots=plots)
    if not math.isfinite(v["peak_loss"]) or v["peak_loss"] > 1.5 * first or last > first:
        advice = (f"the loss blew up (up to {_fmt(v['peak_loss'])}): optimizer.lr={lr:g} is too high; run the doctor "
                  f"again with optimizer.lr={lr / 10:.2g}, then optimizer.lr={lr / 100:.2g}, until this check "
                  f"memorises")
    elif last > 0.9 * first:
        frozen = (f"; only {v['trainable_params']:,} of {v['params']:,} parameters are trainable"
                  if v["trainable_params"] < v["params"] else "")
        advice = (f"the loss barely moved: optimizer.lr={lr:g} may be far too low; or the model is frozen"
                  f"{frozen}, gradients never reach the weights (a .detach() or torch.no_grad() in forward), or the "
                  f"output does not depend on the input")
    else:
        advice = ("it learns, but too slowly to memorise: the learning rate (optimizer.lr), a bug in the head "
                  "(a softmax or ReLU before the loss, the wrong output width), a loss/label mismatch "
                  f"(trainer.loss={subject.loss.name}), vanishing gradients (see 'gradient flow'), too little "
                  f"capacity; or give it more doctor.overfit.steps")
    return Check("overfit one batch", "FAIL", f"not memorised: {story}", advice=advice, values=v, plots=plots)


def label_signal(subject: Subject, model, overfit_values: dict) -> Check:
    """A model that memorised its batch should beat chance on val; at chance, the labels do not follow the images."""
    val = subject.batches(10, subject.val)
    labels = torch.cat([y for _, y in val])
    chance = torch.bincount(labels, minlength=subject.info.num_classes).max().item() / len(labels)
    model.eval()
    acc = _accuracy(subject, model, val)
    # chance plus three standard errors of an accuracy measured on this many images, and at least a tenth of the
    # way from chance to perfect
    margin = max(3 * math.sqrt(chance * (1 - chance) / len(labels)), 0.1 * (1 - chance))
    values = {"val_accuracy": acc, "chance": chance, "threshold": chance + margin, "val_images": len(labels),
              "memorised_images": overfit_values["images"]}
    measured = (f"val acc {acc:.2f} after memorising {overfit_values['images']} images; chance {chance:.2f} "
                f"(most frequent class), signal above {chance + margin:.2f}")
    if acc > chance + margin:
        return Check("labels carry signal", "PASS", measured, values=values)
    return Check("labels carry signal", "FAIL", measured, values=values, advice=(
        "the batch was memorised but nothing carried over to val: the labels carry no signal the images "
        "explain. Check that each image keeps its own label (labels shuffled apart from the images, files "
        "and labels sorted differently, a relabelled class subset) and look at samples.png"))


def lr_range(subject: Subject, work) -> Check | list[Check]:
    """Smith's range test on augmented training batches, against the configured optimizer.lr (none when
    doctor.lr_range.enabled=false). WARNs only when optimizer.lr lies outside the band of good rates around the
    suggestion, or when the curve allows no suggestion (then with its cause and what to change)."""
    s = subject.settings.lr_range
    if not s.enabled:
        return []
    model, optimizer = subject.fresh()
    batches = subject.batches(max(1, min(int(s.steps), len(subject.train))), subject.train)
    result = lr_range_test(model, optimizer, subject.loss, batches, device=subject.device,
                           start_lr=float(s.start_lr), end_lr=float(s.end_lr), steps=int(s.steps),
                           warmup=subject.warmup, autocast=subject.autocast, scaler=subject.scaler())
    plot = plot_lr_range(result, work.path("lr_range.png"), "Learning-rate range test")
    work.figure("lr_range", plot)
    override = suggestion_override(result)
    values = {"suggestion": result.suggestion, "band": list(result.band) if result.band else None,
              "min_loss_lr": result.min_loss_lr, "diverged_at": result.diverged_at, "configured_lr": subject.lr,
              "override": override, "cause": result.cause, "rule": result.rule}
    plots = [str(plot)]
    if result.suggestion is None:
        return Check("learning-rate range", "WARN", f"no suggestion: {result.reason}", values=values, plots=plots,
                     advice=f"{result.advice}; see lr_range.png")
    low, high = result.band
    measured = (f"suggests {override} ({result.rule}; good rates {low:.2g}..{high:.2g}; loss lowest at "
                f"{result.min_loss_lr:.2g}); configured optimizer.lr={subject.lr:g}")
    if low <= subject.lr <= high:
        return Check("learning-rate range", "PASS", measured, values=values, plots=plots)
    direction, times = ("above", subject.lr / high) if subject.lr > high else ("below", low / subject.lr)
    return Check("learning-rate range", "WARN", measured, values=values, plots=plots, advice=(
        f"optimizer.lr={subject.lr:g} is {times:.3g}x {direction} the good rates {low:.2g}..{high:.2g}: train "
        f"with {override}"))
