"""Checks on how gradients flow and activations behave: vanishing or exploding gradients named by layer, the
update/weight ratio the configured optimizer makes, dead ReLUs and saturated sigmoid/tanh layers."""

from __future__ import annotations

import math
import statistics

from cnnlab.diagnose.gradients import GradientReport, Snapshot, measure
from cnnlab.diagnose.doctor_plots import plot_activations, plot_gradients
from cnnlab.diagnose.report import Check
from cnnlab.diagnose.subject import Subject


def gradient_checks(subject: Subject, work) -> list[Check]:
    s = subject.settings.gradients
    model, optimizer = subject.fresh()
    batches = subject.batches(2)
    report = measure(model, optimizer, lambda m, x, y: subject.loss(subject.logits(m, x), y), batches,
                     int(s.steps))
    flow, flagged = _flow(report, s)
    update = _updates(report, s, subject.lr)
    names = [layer.name for layer in report.init.layers]
    trained = _by_name(report.trained, names)
    medians = [statistics.median(report.update_ratios[n]) if report.update_ratios.get(n) else math.nan
               for n in names]
    plot = plot_gradients(names, [layer.relative for layer in report.init.layers], trained, medians, flagged,
                          work.path("gradients.png"), f"Gradient flow: at initialisation and after {report.steps} "
                          f"steps at lr={subject.lr:g}")
    work.figure("gradients", plot)
    flow.plots = update.plots = [str(plot)]
    return [flow, update, _activations(report, s, work)]


def _by_name(snapshot: Snapshot | None, names: list[str]) -> list[float] | None:
    if snapshot is None:
        return None
    relative = {layer.name: layer.relative for layer in snapshot.layers}
    return [relative.get(n, math.nan) for n in names]


def _judge_flow(snapshot: Snapshot, s) -> tuple[str, str, list[str]] | None:
    """(status, what, layers) for a vanishing or exploding gradient in one snapshot, or None when it flows."""
    layers = snapshot.layers
    bad = [l.name for l in layers if not math.isfinite(l.grad_norm) or l.grad_norm > float(s.exploding_norm)]
    if bad:
        return "FAIL", f"exploding gradients (norm above {float(s.exploding_norm):g} or not finite)", bad
    last = layers[-1].relative
    if last == 0 or all(l.grad_norm == 0 for l in layers):
        return "FAIL", "no gradient reaches the weights (all zero)", [l.name for l in layers]
    ratio = float(s.vanishing_ratio)
    small = [l.name for l in layers[:-1] if l.relative < ratio * last]
    if small:
        return "FAIL", f"vanishing gradients (|grad|/|weight| below {ratio:g}x the last layer's)", small
    large = [l.name for l in layers[:-1] if l.relative > last / ratio]
    if large:
        return "WARN", f"exploding gradients (|grad|/|weight| above {1 / ratio:g}x the last layer's)", large
    return None


def _flow(report: GradientReport, s) -> tuple[Check, set[str]]:
    init = report.init
    spread = [l.relative for l in init.layers]
    values = {"init": {l.name: {"grad_norm": l.grad_norm, "weight_norm": l.weight_norm} for l in init.layers},
              "trained": None if report.trained is None else
              {l.name: {"grad_norm": l.grad_norm, "weight_norm": l.weight_norm} for l in report.trained.layers},
              "steps": report.steps}
    if not init.layers:
        return Check("gradient flow", "WARN", "no trainable weight layers found"), set()
    first, last = init.layers[0], init.layers[-1]
    measured = (f"|grad|/|weight| at init: first layer {first.name} {first.relative:.2g}, last {last.name} "
                f"{last.relative:.2g} (range {min(spread):.2g}..{max(spread):.2g} over {len(spread)} layers)")
    verdict = _judge_flow(init, s)
    when = "at initialisation"
    # after the steps: judged only while the batch is not yet learnt (a learnt batch has small gradients anyway)
    if verdict is None and report.trained is not None and report.trained.loss > 0.1 * init.loss:
        verdict, when = _judge_flow(report.trained, s), f"after {report.steps} steps"
    if verdict is None:
        return Check("gradient flow", "PASS", measured, values=values), set()
    status, what, layers = verdict
    named = ", ".join(layers[:8]) + (f" and {len(layers) - 8} more" if len(layers) > 8 else "")
    if what.startswith("vanishing"):
        advice = (f"{what} {when} in {named}: the first layers barely learn. Use ReLU-family activations instead "
                  f"of sigmoid/tanh (model.activation=relu), He/Xavier init (model.init=kaiming), batch norm, "
                  f"residual connections, or fewer layers")
    elif what.startswith("no gradient"):
        advice = (f"{what} {when}: every unit dead, a detached output, or a frozen model; lower optimizer.lr and "
                  f"check the forward pass")
    else:
        advice = (f"{what} {when} in {named}: lower optimizer.lr, clip gradients (trainer.grad_clip=1.0), add batch "
                  f"norm or a smaller init")
    return Check("gradient flow", status, f"{measured}; {what} {when}", advice=advice, values=values), set(layers)


def _updates(report: GradientReport, s, lr: float) -> Check:
    ratios = {name: r for name, r in report.update_ratios.items() if r}
    values = {name: {"median": statistics.median(r), "max": max(r)} for name, r in ratios.items()}
    if not ratios:
        return Check("update/weight ratio", "FAIL", f"the first step at lr={lr:g} already gave a non-finite loss",
                     values=values, advice=f"optimizer.lr={lr:g} is far too high: try 10x lower")
    typical = statistics.median(v["median"] for v in values.values())
    peak_layer = max(values, key=lambda n: values[n]["max"])
    peak = values[peak_layer]["max"]
    measured = (f"median {typical:.2g} per step over {len(ratios)} layers (rule of thumb ~1e-3), largest "
                f"{peak:.2g} in {peak_layer}, {report.steps} steps at lr={lr:g}")
    if report.trained is None:
        return Check("update/weight ratio", "FAIL", measured + f"; the loss became non-finite at step {report.steps}",
                     values=values, advice=f"optimizer.lr={lr:g} is too high: try 10x lower")
    if peak > float(s.update_ratio_high):
        return Check("update/weight ratio", "WARN", measured, values=values, advice=(
            f"a step changes {peak_layer}'s weights by {peak:.2g} of their size: optimizer.lr={lr:g} is likely "
            f"too high; try 10x lower"))
    if all(v["median"] < float(s.update_ratio_low) for v in values.values()):
        return Check("update/weight ratio", "WARN", measured, values=values, advice=(
            f"the weights barely change (below {float(s.update_ratio_low):g} of their size per step): "
            f"optimizer.lr={lr:g} is likely too low; try 10-100x higher"))
    return Check("update/weight ratio", "PASS", measured, values=values)


def _activations(report: GradientReport, s, work) -> Check:
    init = report.init.activations
    if not init:
        return Check("activations", "PASS", "no ReLU, sigmoid or tanh modules to inspect")
    trained = report.trained.activations if report.trained is not None else None
    if trained is not None and [a.name for a in trained] != [a.name for a in init]:
        trained = None

    def fraction(stat):
        return stat.dead if stat.kind == "relu" else stat.saturated

    limit_dead, limit_sat = float(s.dead_fraction), float(s.saturated_fraction)
    latest = trained or init
    bad = [a for a in latest if fraction(a) > (limit_dead if a.kind == "relu" else limit_sat)]
    plot = plot_activations([a.name for a in init], [a.kind for a in init], [fraction(a) for a in init],
                            [fraction(a) for a in trained] if trained else None, min(limit_dead, limit_sat),
                            work.path("activations.png"), f"Activations: at initialisation and after "
                            f"{report.steps} steps")
    work.figure("activations", plot)
    values = {a.name: {"kind": a.kind, "init": fraction(a), "trained": fraction(t) if trained else None}
              for a, t in zip(init, trained or init)}
    worst = max(latest, key=fraction)
    when = f"after {report.steps} steps" if trained else "at initialisation"
    measured = (f"{len(init)} activation layers; worst {when}: {worst.name} ({worst.kind}) "
                f"{fraction(worst):.0%} {'dead' if worst.kind == 'relu' else 'saturated'}")
    if not bad:
        return Check("activations", "PASS", measured, values=values, plots=[str(plot)])
    dead = [a.name for a in bad if a.kind == "relu"]
    saturated = [a.name for a in bad if a.kind != "relu"]
    advice = []
    if dead:
        advice.append(f"dead ReLUs in {', '.join(dead)}: usually a too-high learning rate knocked them out (lower "
                      f"optimizer.lr), or a bad init/bias; model.activation=leaky_relu keeps a gradient")
    if saturated:
        advice.append(f"saturated {', '.join(saturated)}: inputs too large for sigmoid/tanh; normalise the inputs, "
                      f"use a smaller init, batch norm, or ReLU-family activations")
    return Check("activations", "WARN", measured, values=values, plots=[str(plot)], advice="; ".join(advice))
