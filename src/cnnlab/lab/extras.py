"""What a lesson adds to the comparison of its arms, measured by cnnlab's own commands: cnnlab-doctor (the LR
range test, per-layer gradient norms) and cnnlab-explain (learned filters, feature maps). Each function takes
the lesson and its result and returns {"values": ..., "plots": [paths], "text": [lines for the page]}."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from cnnlab.errors import RunError
from cnnlab.lab.arms import QUIET, arm_overrides
from cnnlab.lab.lessons import Lesson

log = logging.getLogger("cnnlab.lab")

# cnnlab-doctor's checks cut down for a smoke run
DOCTOR_QUICK = ["doctor.lr_range.steps=20", "doctor.overfit.steps=5", "doctor.gradients.steps=2",
                "doctor.data.max_images=200"]


def _extra_arm(lesson: Lesson) -> str:
    return lesson.extra_arm or next(iter(lesson.arms))


def _command(module: str, args: list[str], log_file: Path) -> None:
    """Run a cnnlab command as a user would (commands never import one another), its output in `log_file`."""
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log_file.write_text(proc.stdout + proc.stderr)
    if proc.returncode not in (0, 1):  # cnnlab-doctor exits 1 when a check FAILs: a finding, not a failure
        raise RunError(f"{module} failed ({proc.returncode}), see {log_file}: {(proc.stdout + proc.stderr)[-1500:]}")


def _doctor(lesson: Lesson, arm: str, result, overrides: list[str]) -> dict:
    """cnnlab-doctor on the arm's first-seed config; returns its doctor.json."""
    run_dir = result.out_dir / "doctor" / arm
    args = [*QUIET, *arm_overrides(lesson, arm, lesson.seeds[0], result.quick, overrides),
            *(DOCTOR_QUICK if result.quick else []), "logger=none", f"hydra.run.dir={run_dir}"]
    _command("cnnlab.cli.doctor", args, result.out_dir / "doctor" / f"{arm}.log")
    return json.loads((run_dir / "doctor.json").read_text())


def _check(report: dict, name: str) -> dict:
    return next((c for c in report["checks"] if c["name"] == name), {})


def lr_finder(lesson: Lesson, result, overrides: list[str]) -> dict:
    """The LR range test (cnnlab-doctor) on the extra arm: the rate it suggests, and its plot."""
    arm = _extra_arm(lesson)
    check = _check(_doctor(lesson, arm, result, overrides), "learning-rate range")
    values = check.get("values", {})
    suggestion = values.get("suggestion")
    text = [f"cnnlab-doctor's LR range test on the `{arm}` configuration (optimizer.lr={values.get('configured_lr')}) "
            + (f"suggests **optimizer.lr={suggestion:.3g}** ({values.get('rule', 'steepest fall')}, read on the "
               f"centred loss; good rates "
               f"{values['band'][0]:.2g}..{values['band'][1]:.2g}; the loss is lowest at "
               f"{values.get('min_loss_lr'):.3g})." if suggestion else f"gives no suggestion: {check.get('measured')}.")]
    return {"values": values, "plots": check.get("plots", []), "text": text}


def gradients(lesson: Lesson, result, overrides: list[str]) -> dict:
    """Per-layer gradient norms at initialisation (cnnlab-doctor's gradient-flow check) for every arm, on one
    plot: vanishing gradients show as norms falling towards the input."""
    per_arm = {}
    for arm in lesson.arms:
        check = _check(_doctor(lesson, arm, result, overrides), "gradient flow")
        init = (check.get("values") or {}).get("init") or {}
        per_arm[arm] = {"layers": list(init), "grad_norm": [v["grad_norm"] for v in init.values()],
                        "relative": [v["grad_norm"] / v["weight_norm"] if v["weight_norm"] else None
                                     for v in init.values()],
                        "verdict": check.get("measured", "")}
    plot = _plot_gradients(per_arm, result.out_dir / "gradient_norms.png", lesson.name)
    text = []
    for arm, v in per_arm.items():
        norms = [g for g in v["grad_norm"] if g is not None]
        if len(norms) >= 2 and norms[-1] > 0:
            text.append(f"`{arm}`: the first layer's gradient norm at initialisation is {norms[0] / norms[-1]:.2g} x "
                        f"the last layer's ({len(norms)} weight layers).")
    return {"values": per_arm, "plots": [str(plot)] if plot else [], "text": text}


def _plot_gradients(per_arm: dict, path: Path, title: str) -> Path | None:
    from cnnlab.util.plotting import pyplot, save

    if not any(v["grad_norm"] for v in per_arm.values()):
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 5), layout="constrained")
    for arm, v in per_arm.items():
        ax.plot(range(1, len(v["grad_norm"]) + 1), v["grad_norm"], marker="o", label=arm)
    ax.set_yscale("log")
    ax.set_xlabel("weight layer (1 = next to the input)")
    ax.set_ylabel("|gradient| at initialisation (one batch)")
    ax.set_title(f"{title}: per-layer gradient norms")
    ax.grid(alpha=0.3, which="both")
    ax.legend(frameon=False)
    return save(fig, path)


def filters(lesson: Lesson, result, overrides: list[str]) -> dict:
    """cnnlab-explain on every arm's first-seed run: learned filters and feature maps."""
    plots, text = [], []
    for arm in result.arms:
        out = result.out_dir / "explain" / arm.name
        _command("cnnlab.cli.explain", [str(arm.runs[0].run_dir), "--out", str(out), "--images", "6", "--device", "cpu"],
                 result.out_dir / "explain" / f"{arm.name}.log")
        shown = sorted(p for p in out.glob("*.png") if p.name.startswith(("filters_", "feature_maps_")))
        plots += [str(p) for p in shown]
        epochs = arm.runs[0].metrics.get("epochs_completed")
        text.append(f"`{arm.name}` (seed {lesson.seeds[0]}, after {epochs} epochs): "
                    + ", ".join(p.stem.replace("_", " ") for p in shown) + ".")
    return {"values": {}, "plots": plots, "text": text}
