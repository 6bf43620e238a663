"""cnnlab's learning-rate range test against torch-lr-finder's, on the default LeNet-5 run's model and data.

Both run on the same initial weights, the same batches in the same order and the same optimizer, with the
same start/end lr, steps, smoothing and divergence threshold; the script prints both suggestions, their ratio,
the largest difference between the smoothed loss curves, and the time each took.

    OMP_NUM_THREADS=1 python scripts/bench_lr_finder.py [--steps 200] [--plot docs/img/lr-finder-lenet.png]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from cnnlab.config.compose import compose_config
from cnnlab.diagnose.lr_finder import lr_range_test, plot_lr_range, suggestion_override
from cnnlab.engine.optim import build_optimizer
from cnnlab.run.lifecycle import prepare

QUIET = ["trainer.progress=none", "trainer.summary=none", "logger=none", "trainer.device=cpu"]


def default_lenet_run(run_dir: Path, *overrides: str):
    """The default cnnlab-train run (LeNet-5, mnist_sample, AdamW) built as training would build it."""
    run = prepare(compose_config([*QUIET, *overrides], run_dir), overrides=[])
    run.data.train.set_epoch(1)  # the loader's first epoch: its order and augmentation
    return run


def scheduler_free_optimizer(run):
    """The run's optimizer built again without a schedule: torch-lr-finder refuses one with a scheduler attached."""
    return build_optimizer(run.cfg.optimizer, run.model)


def torch_lr_finder_range(run, optimizer, *, start_lr, end_lr, steps, smooth, diverge):
    """torch-lr-finder's exponential range test and its suggestion (steepest gradient, skip_start=10, skip_end=5)."""
    import matplotlib  # torch-lr-finder imports pyplot itself: select the file backend first

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torch_lr_finder import LRFinder, TrainDataLoaderIter  # the reference implementation, a dev dependency

    finder = LRFinder(run.model, optimizer, run.trainer.task.loss, device="cpu")
    finder.range_test(TrainDataLoaderIter(run.data.train), start_lr=start_lr, end_lr=end_lr, num_iter=steps,
                      step_mode="exp", smooth_f=1 - smooth, diverge_th=diverge)
    fig, ax = plt.subplots()
    _, suggestion = finder.plot(skip_start=10, skip_end=5, ax=ax)
    plt.close(fig)
    finder.reset()
    return finder.history, suggestion


def compare(run, *, start_lr=1e-7, end_lr=10.0, steps=200, smooth=0.98, diverge=4.0) -> dict:
    """Both range tests on the same model, batches and optimizer; what they found and how far apart."""
    optimizer = scheduler_free_optimizer(run)
    settings = dict(start_lr=start_lr, end_lr=end_lr, steps=steps, smooth=smooth)
    started = time.perf_counter()
    ours = lr_range_test(run.model, optimizer, run.trainer.task.loss, run.data.train, device="cpu",
                         diverge=diverge, **settings)
    ours_s = time.perf_counter() - started
    started = time.perf_counter()
    theirs, their_suggestion = torch_lr_finder_range(run, optimizer, diverge=diverge, **settings)
    theirs_s = time.perf_counter() - started
    common = min(len(ours.smoothed), len(theirs["loss"]))
    # Their average starts at the first loss, ours at 0 with bias correction; their rule applied to our raw
    # losses must give their curve exactly if both tests took the same steps.
    replayed = their_smoothing(ours.losses[:common], 1 - smooth)
    same_steps_gap = np.abs(replayed - theirs["loss"][:common]) / np.asarray(theirs["loss"][:common])
    rules_gap = np.abs(np.subtract(ours.smoothed[:common], theirs["loss"][:common])) / np.asarray(theirs["loss"][:common])
    # cnnlab's own rule differs on purpose (docs/lr_finder.md): the mechanics are compared with their rule and
    # smoothing applied to our raw losses
    mine = torch_lr_finder_steepest(ours.lrs, their_smoothing(ours.losses, 1 - smooth))
    return {"ours": ours, "theirs_history": theirs, "ours_suggestion": mine,
            "theirs_suggestion": their_suggestion, "ratio": mine / their_suggestion,
            "ours_steps": len(ours.lrs), "theirs_steps": len(theirs["lr"]),
            "same_lrs": bool(np.allclose(ours.lrs[:common], theirs["lr"][:common], rtol=1e-9)),
            "same_steps_gap": float(same_steps_gap.max()), "smoothing_gap": float(rules_gap.max()),
            "ours_s": ours_s, "theirs_s": theirs_s}


def torch_lr_finder_steepest(lrs, smoothed) -> float | None:
    """torch-lr-finder's suggestion (LRFinder.plot(suggest_lr=True)): the minimum of np.gradient over the smoothed
    curve without its first 10 and last 5 points (against the step index, i.e. log(lr) for an exponential test)."""
    lrs, losses = lrs[10:-5], smoothed[10:-5]
    if len(losses) < 2:
        return None
    return float(lrs[int(np.argmin(np.gradient(np.asarray(losses))))])


def their_smoothing(raw: list[float], smooth_f: float) -> np.ndarray:
    """torch-lr-finder's running average: starts at the first loss, no bias correction."""
    out = np.empty(len(raw))
    for i, value in enumerate(raw):
        out[i] = value if i == 0 else smooth_f * value + (1 - smooth_f) * out[i - 1]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--plot", type=Path, help="also write our range test's plot here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        found = compare(default_lenet_run(Path(tmp) / "run"), steps=args.steps)
    ours = found["ours"]
    print(f"cnnlab:           their rule on our losses {found['ours_suggestion']:.3g} (cnnlab's own rule: "
          f"{suggestion_override(ours) or ours.reason}), "
          f"minimum at {ours.min_loss_lr:.3g}, {found['ours_steps']} steps, "
          f"diverged at {ours.diverged_at if ours.diverged_at is None else f'{ours.diverged_at:.3g}'}, "
          f"{found['ours_s']:.1f} s")
    print(f"torch-lr-finder:  suggestion {found['theirs_suggestion']:.3g}, {found['theirs_steps']} steps, "
          f"{found['theirs_s']:.1f} s")
    print(f"ratio (cnnlab / torch-lr-finder): {found['ratio']:.3f}; same lr per step: {found['same_lrs']}")
    print(f"same steps taken: their smoothing of our raw losses is off their curve by {found['same_steps_gap']:.1e} "
          f"at most (relative)")
    print(f"the two smoothed curves differ by {found['smoothing_gap']:.1%} at most (their average starts at the "
          f"first loss, ours is bias-corrected)")
    if args.plot:
        print("plot:", plot_lr_range(ours, args.plot, "LR range test: LeNet-5 on mnist_sample (AdamW)"))


if __name__ == "__main__":
    main()
