"""Which range-test rule suggests the rate that trains best? Measured per (model, optimizer) on bundled data.

For each setup (a zoo model on bundled data, sized down) and each optimizer family of configs/optimizer:

(a) the range test exactly as cnnlab-doctor runs it (Subject.fresh(): the configured optimizer at a constant
    rate, the first training batches, doctor.lr_range's steps/start_lr/end_lr), at 100 steps (the doctor's
    default) and 200; the curves are saved, and every rule's suggestion is computed from them:
    torch-lr-finder's steepest slope (skip_start=10, skip_end=5), fastai's minimum/10 and valley (on the curve
    without its first tenth and last 5 points), and cnnlab's rule (cnnlab.diagnose.lr_finder.suggest);
(b) a sweep of real trainings (cnnlab.run.lifecycle.train, in process) over a log grid of optimizer.lr, with
    the run's own schedule (one-cycle by default) for a few epochs and one or more seeds; the best rate is the
    one with the lowest mean best val loss (val accuracy saturates near 98% for many rates on the digits).

Writes a JSON file with everything (curves included) and prints the markdown table of docs/lr_finder.md.
`--table-only` re-tabulates a saved JSON (e.g. after changing cnnlab's rule) without training again.

    OMP_NUM_THREADS=1 python scripts/lr_finder_study.py --out docs/data/lr_finder_study.json      # ~45 min, 1 core
    OMP_NUM_THREADS=1 python scripts/lr_finder_study.py --quick --out /tmp/lr_quick.json          # ~1 min smoke run
    python scripts/lr_finder_study.py --table-only --out docs/data/lr_finder_study.json
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from bench_lr_finder import torch_lr_finder_steepest  # scripts/: torch-lr-finder's rule

QUIET = ["trainer.progress=none", "trainer.summary=none", "logger=none", "trainer.device=cpu",
         "trainer.checkpoint.save_last=false", "trainer.checkpoint.save_best=false",
         "trainer.test_with=last"]
# Each setup: overrides that size it down so that the whole study fits about 45 minutes of one core.
SETUPS = {
    "lenet5/mnist_sample": ["model=lenet5", "data=mnist_sample"],
    "resnet20/shapes": ["model=resnet20", "data=shapes", "data.num_samples=2400", "data.image_size=16",
                        "data.input_size=[16,16]", "augment=none"],
    "convnet/shapes": ["model=convnet", "data=shapes", "data.num_samples=2400", "data.image_size=16",
                       "data.input_size=[16,16]", "augment=none"],
}
# Epochs of each sweep training: the digits are learnt in 3, the shapes need more (still far from saturated at 6,
# so that the rates stay apart).
EPOCHS = {"lenet5/mnist_sample": 3, "resnet20/shapes": 6, "convnet/shapes": 6}
OPTIMIZERS = ["sgd", "adam", "adamw", "rmsprop", "adagrad"]
GRID = [10 ** (e / 2) for e in range(-8, 1)]  # 1e-4 .. 1 in half decades: 9 rates
RULES = ["torch_lr_finder_steepest", "fastai_minimum_div10", "fastai_valley", "cnnlab_previous", "centred_valley",
         "centred_minimum_div3", "centred_minimum_div10", "cnnlab"]


# ---- the rules, on a recorded curve (rates and smoothed losses) ---------------------------------------------
def _fastai_slice(lrs, smoothed, steps):
    return lrs[steps // 10:-5], smoothed[steps // 10:-5]


def fastai_minimum_div10(lrs, smoothed, steps):
    """fastai's lr_find suggest_funcs=minimum: the rate at the smoothed loss's minimum, divided by 10."""
    lrs, losses = _fastai_slice(lrs, smoothed, steps)
    if not losses:
        return None
    return float(lrs[int(np.argmin(losses))]) / 10


def fastai_valley(lrs, smoothed, steps):
    """fastai's valley: the longest decreasing subsequence of the loss; the point 1/3 + 1/6 of the way along it."""
    lrs, losses = _fastai_slice(lrs, smoothed, steps)
    n = len(losses)
    if n < 2:
        return None
    length, start, end = [1] * n, 0, 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and length[i] < length[j] + 1:
                length[i] = length[j] + 1
            if length[end] < length[i]:
                end, start = i, i - length[i]
    third = (end - start) / 3
    return float(lrs[start + int(third) + int(third / 2)])


def cnnlab_previous(lrs, smoothed, steps):
    """cnnlab's previous rule: the steepest fall of the exponentially smoothed loss between step 10 and
    its minimum, and no suggestion when the smoothed minimum is less than 2% below its value at step 10."""
    if len(smoothed) < 13:
        return None
    lowest = 10 + int(np.argmin(smoothed[10:]))
    if smoothed[lowest] > 0.98 * smoothed[10] or lowest - 10 < 2:
        return None
    slopes = np.gradient(np.asarray(smoothed), np.log10(lrs))
    return float(lrs[10 + int(np.argmin(slopes[10:lowest]))])


def _centred(lrs, losses):
    from cnnlab.diagnose.lr_finder import suggest

    return suggest(lrs, losses)


def centred_minimum(lrs, losses, divisor):
    read = _centred(lrs, losses)
    return None if read.suggestion is None else read.min_loss_lr / divisor


def centred_valley(lrs, losses):
    read = _centred(lrs, losses)
    return None if read.suggestion is None else fastai_valley(lrs, read.curve, 0)


def warms_up(found: dict) -> bool:
    """Whether the sweep's trainings warmed up to their rate (the default one-cycle) or started at it."""
    from cnnlab.config.compose import compose_config
    from cnnlab.diagnose.subject import warms_up as schedule_warms_up

    with tempfile.TemporaryDirectory() as tmp:
        return schedule_warms_up(compose_config(list(found.get("train_overrides", [])), Path(tmp)).scheduler)


def suggestions(curve: dict, warmup: bool = True) -> dict:
    from cnnlab.diagnose.lr_finder import suggest

    lrs, smoothed, steps, losses = curve["lrs"], curve["smoothed"], curve["steps"], curve["losses"]
    return {"torch_lr_finder_steepest": torch_lr_finder_steepest(lrs, smoothed),
            "fastai_minimum_div10": fastai_minimum_div10(lrs, smoothed, steps),
            "fastai_valley": fastai_valley(lrs, smoothed, steps),
            "cnnlab_previous": cnnlab_previous(lrs, smoothed, steps),
            "centred_valley": centred_valley(lrs, losses),
            "centred_minimum_div3": centred_minimum(lrs, losses, 3),
            "centred_minimum_div10": centred_minimum(lrs, losses, 10),
            "cnnlab": suggest(lrs, losses, warmup=warmup).suggestion}


# ---- measuring ------------------------------------------------------------------------------------------------
def range_curve(setup: list[str], optimizer: str, steps: int, run_dir: Path) -> dict:
    """The doctor's range test on this setup (cnnlab.diagnose.checks_training.lr_range, without the verdict)."""
    from cnnlab.config.compose import compose_config
    from cnnlab.diagnose.lr_finder import lr_range_test
    from cnnlab.diagnose.subject import Subject
    from cnnlab.run.lifecycle import prepare

    cfg = compose_config([*QUIET, *setup, f"optimizer={optimizer}", f"doctor.lr_range.steps={steps}"], run_dir,
                         config_name="doctor")
    subject = Subject.from_run(prepare(cfg, overrides=[], kind="doctor"))
    s = subject.settings.lr_range
    model, opt = subject.fresh()
    batches = subject.batches(max(1, min(int(s.steps), len(subject.train))), subject.train)
    result = lr_range_test(model, opt, subject.loss, batches, device=subject.device, start_lr=float(s.start_lr),
                           end_lr=float(s.end_lr), steps=int(s.steps))
    return {"steps": steps, "lrs": result.lrs, "losses": result.losses, "smoothed": result.smoothed,
            "configured_lr": subject.lr}


def train_once(setup: list[str], optimizer: str, lr: float, seed: int, epochs: int, limit: int | None,
               run_dir: Path, more: tuple[str, ...] = ()) -> dict:
    from cnnlab.config.compose import compose_config
    from cnnlab.errors import ConfigError
    from cnnlab.run.lifecycle import train

    extra = [f"trainer.limit_train_batches={limit}"] if limit else []
    cfg = compose_config([*QUIET, *setup, f"optimizer={optimizer}", f"optimizer.lr={lr!r}", f"seed={seed}",
                          f"trainer.max_epochs={epochs}", *extra, *more],
                         run_dir)
    try:
        out = train(cfg, overrides=[])
    except ConfigError:
        raise
    except Exception as bad:  # a diverged run may stop with an error: it trained worst
        return {"val_acc": 0.0, "val_loss": math.inf, "error": f"{type(bad).__name__}: {bad}"[:200]}
    loss = out.get("best_val/loss")
    loss = float(loss) if loss is not None and math.isfinite(float(loss)) else math.inf
    return {"val_acc": float(out.get("val/acc_best") or 0.0), "val_loss": loss,
            "test_acc": float(out.get("test/acc") or 0.0)}


def measure(args) -> dict:
    setups = {k: v for k, v in SETUPS.items() if k.split("/")[0] in args.models}
    found = {"command": " ".join(["python", *sys.argv]),
             "date": datetime.now(timezone.utc).isoformat(timespec="minutes"),
             "commit": _commit(), "grid": args.grid,
             "seeds": list(range(args.first_seed, args.first_seed + args.seeds)),
             "epochs": {name: args.epochs or EPOCHS[name] for name in setups},
             "limit_train_batches": args.limit, "range_steps": args.range_steps,
             "train_overrides": list(args.train_overrides), "results": []}
    done = set()
    if args.resume and Path(args.out).exists():  # keep the (setup, optimizer) rows a stopped run finished
        found["results"] = json.loads(Path(args.out).read_text())["results"]
        done = {(row["setup"], row["optimizer"]) for row in found["results"]}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, setup in setups.items():
            for optimizer in args.optimizers:
                if (name, optimizer) in done:
                    continue
                row = {"setup": name, "optimizer": optimizer, "curves": {}, "sweep": {}}
                for steps in args.range_steps:
                    row["curves"][str(steps)] = range_curve(setup, optimizer, steps,
                                                              tmp / f"range-{len(found['results'])}-{steps}")
                for lr in args.grid:
                    epochs = args.epochs or EPOCHS[name]
                    runs = [train_once(setup, optimizer, lr, seed, epochs, args.limit,
                                     tmp / f"train-{len(found['results'])}-{lr:.3g}-{seed}", args.train_overrides)
                            for seed in range(args.first_seed, args.first_seed + args.seeds)]
                    row["sweep"][repr(lr)] = runs
                found["results"].append(row)
                print(f"[{time.perf_counter() - started:7.0f}s] {name} {optimizer}: "
                      + ", ".join(f"{float(lr):.2g}: {np.mean([r['val_loss'] for r in rs]):.3g}/"
                                  f"{np.mean([r['val_acc'] for r in rs]):.3f}" for lr, rs in row["sweep"].items()),
                      flush=True)
                Path(args.out).write_text(json.dumps(found, default=_json_float))  # partial results survive
    found["seconds"] = time.perf_counter() - started
    return found


def _json_float(value):
    return float(value)


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# ---- the table ------------------------------------------------------------------------------------------------
def best_rate(sweep: dict) -> tuple[float, float, float]:
    """(best rate, its mean val loss, its mean val acc): lowest mean best val loss over the seeds."""
    scored = [(np.mean([r["val_loss"] for r in runs]), -np.mean([r["val_acc"] for r in runs]), float(lr))
              for lr, runs in sweep.items()]
    loss, acc, lr = min(scored)
    return lr, loss, -acc


def good_band(sweep: dict, tolerance: float) -> tuple[float, float]:
    """The lowest and highest rate whose mean val acc is within `tolerance` of the best rate's."""
    accs = {float(lr): np.mean([r["val_acc"] for r in runs]) for lr, runs in sweep.items()}
    top = max(accs.values())
    good = [lr for lr, acc in accs.items() if acc >= top - tolerance]
    return min(good), max(good)


def table(found: dict, steps: str = "100", tolerance: float = 0.01) -> str:
    head = ("| model / data | optimizer | best lr (val loss, acc) | rates within 1 point of the best acc | "
            + " | ".join(RULE_TITLES[r] for r in RULES) + " |")
    lines = [head, "|" + "---|" * (4 + len(RULES))]
    errors = {r: [] for r in RULES}
    misses = {r: 0 for r in RULES}
    warmup = warms_up(found)
    for row in found["results"]:
        best, loss, acc = best_rate(row["sweep"])
        low, high = good_band(row["sweep"], tolerance)
        rules = suggestions(row["curves"][steps], warmup)
        cells = []
        for rule in RULES:
            value = rules[rule]
            if value is None:
                cells.append("none")
                misses[rule] += 1
                continue
            off = math.log10(value / best)
            errors[rule].append(abs(off))
            cells.append(f"{value:.2g} ({off:+.1f})")
        lines.append(f"| {row['setup']} | {row['optimizer']} | {best:.2g} ({loss:.3f}, {acc:.1%}) | "
                     f"{low:.2g} .. {high:.2g} | " + " | ".join(cells) + " |")
    lines.append("| **mean abs log10 error** | | | | " + " | ".join(
        f"**{np.mean(errors[r]):.2f}**" + (f" ({misses[r]} none)" if misses[r] else "") if errors[r] else "n/a"
        for r in RULES) + " |")
    lines.append("| **within 0.5 decade of best** | | | | " + " | ".join(
        f"{sum(e <= 0.5 for e in errors[r])}/{len(found['results'])}" for r in RULES) + " |")
    return "\n".join(lines)


CHANCE = {"lenet5/mnist_sample": 0.1, "resnet20/shapes": 0.125, "convnet/shapes": 0.125}


def _band(read, below, above, cap):
    """A candidate band: [suggestion / below, suggestion * above], capped at `cap` x the minimum's rate;
    ("fall", ...) instead: from where the centred curve has fallen by a tenth of its drop to its minimum."""
    if read.suggestion is None:
        return None
    if below == "fall":
        lowest = read.lrs.index(read.min_loss_lr)
        level = read.curve[0] - 0.1 * (read.curve[0] - read.curve[lowest])
        return next(lr for lr, v in zip(read.lrs, read.curve) if v < level), read.min_loss_lr
    high = read.suggestion * above
    return read.suggestion / below, min(high, read.min_loss_lr * cap) if cap else high


def _verdicts(row, band, good):
    """(false PASS, false WARN) grid rates of a row: inside the band but training badly (val acc below halfway
    from chance to the best), outside it but training well (within `good` of the best val acc)."""
    accs = {float(lr): np.mean([r["val_acc"] for r in runs]) for lr, runs in row["sweep"].items()}
    top, chance = max(accs.values()), CHANCE[row["setup"]]
    inside = {lr for lr in accs if band is not None and band[0] <= lr <= band[1]}
    return ([lr for lr in inside if accs[lr] < chance + 0.5 * (top - chance)],
            [lr for lr in accs if lr not in inside and accs[lr] >= top - good], accs, inside)


def band_table(found: dict, steps: str = "100", good: float = 0.02) -> str:
    """The doctor's band against the sweep, per row: grid rates inside it that train badly (a PASS that should
    be a WARN) and rates outside it that train well (a WARN that should be a PASS)."""
    from cnnlab.diagnose.lr_finder import suggest

    lines = ["| model / data | optimizer | band | grid rates in band: val acc | false PASS | false WARN |",
             "|---|---|---|---|---|---|"]
    warmup = warms_up(found)
    for row in found["results"]:
        curve = row["curves"][steps]
        band = suggest(curve["lrs"], curve["losses"], warmup=warmup).band
        false_pass, false_warn, accs, inside = _verdicts(row, band, good)
        if band is None:
            lines.append(f"| {row['setup']} | {row['optimizer']} | none | | | |")
            continue
        lines.append(f"| {row['setup']} | {row['optimizer']} | {band[0]:.2g} .. {band[1]:.2g} | "
                     + ", ".join(f"{lr:.2g}: {accs[lr]:.1%}" for lr in sorted(inside)) + " | "
                     + (", ".join(f"{lr:.2g}" for lr in sorted(false_pass)) or "-") + " | "
                     + (", ".join(f"{lr:.2g}" for lr in sorted(false_warn)) or "-") + " |")
    return "\n".join(lines)


BAND_CANDIDATES = [(10, 10, 1), (10, 10, 3), (10, 10, None), (10, 3, None), (10, 3, 1), (5, 5, None), (3, 3, None),
                   (30, 10, None), (30, 10, 1), (30, 10, 3), (30, 3, 1), ("fall", None, None)]


def band_candidates(found: dict, good: float = 0.02) -> str:
    """False PASS / false WARN over the grid rates of the rows with a suggestion, for candidate bands."""
    from cnnlab.diagnose.lr_finder import suggest

    steps_list = sorted(found["results"][0]["curves"], key=int)
    lines = ["| band | " + " | ".join(f"false PASS / false WARN at {s} steps" for s in steps_list) + " |",
             "|---|" + "---|" * len(steps_list)]
    for below, above, cap in BAND_CANDIDATES:
        name = ("fall start .. minimum" if below == "fall" else
                f"/{below} .. x{above}" + (f", capped at {cap} x minimum" if cap else ""))
        cells = []
        for steps in steps_list:
            fp = fw = n = 0
            for row in found["results"]:
                curve = row["curves"][steps]
                band = _band(suggest(curve["lrs"], curve["losses"]), below, above, cap)
                if band is None:  # no suggestion: the doctor WARNs "inconclusive" whatever the rate
                    continue
                verdict = _verdicts(row, band, good)
                fp, fw, n = fp + len(verdict[0]), fw + len(verdict[1]), n + len(verdict[2])
            cells.append(f"{fp} / {fw} (of {n})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


RULE_TITLES = {"torch_lr_finder_steepest": "torch-lr-finder steepest", "fastai_minimum_div10": "fastai minimum/10",
               "fastai_valley": "fastai valley", "cnnlab_previous": "cnnlab previous", "centred_valley": "centred valley",
               "centred_minimum_div3": "centred min/3",
               "centred_minimum_div10": "centred min/10",
               "cnnlab": "cnnlab now (centred steepest; min/3 without warm-up)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="docs/data/lr_finder_study.json")
    parser.add_argument("--quick", action="store_true", help="LeNet-5 with sgd and adam, 3 rates, 1 short epoch")
    parser.add_argument("--table-only", action="store_true", help="print the table of a saved --out file")
    parser.add_argument("--models", nargs="+", default=["lenet5", "resnet20"],
                        help="setups by model name: lenet5 resnet20 convnet")
    parser.add_argument("--optimizers", nargs="+", default=OPTIMIZERS)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None, help="epochs of each training (default: per setup)")
    parser.add_argument("--limit", type=int, default=None, help="trainer.limit_train_batches of each training")
    parser.add_argument("--train-overrides", nargs="*", default=[],
                        help="more overrides for the sweep's trainings, e.g. scheduler=none (a constant rate)")
    parser.add_argument("--range-steps", nargs="+", type=int, default=[100, 200])
    parser.add_argument("--steps-for-table", default="100")
    parser.add_argument("--resume", action="store_true", help="keep the rows already in --out, measure the rest")
    parser.add_argument("--merge", nargs="*", default=[],
                        help="with --table-only: more result files (other seeds) whose trainings join --out's")
    args = parser.parse_args()
    args.grid = GRID
    if args.quick:
        args.models, args.optimizers, args.grid = ["lenet5"], ["sgd", "adam"], [1e-3, 1e-2, 1e-1]
        args.epochs, args.limit, args.seeds, args.range_steps = 1, 5, 1, [100]
    if args.table_only:
        found = json.loads(Path(args.out).read_text())
        for other in args.merge:
            more = {(row["setup"], row["optimizer"]): row for row in json.loads(Path(other).read_text())["results"]}
            found["command"] += f"  +  {json.loads(Path(other).read_text())['command']}"
            for row in found["results"]:
                for lr, runs in more.get((row["setup"], row["optimizer"]), {"sweep": {}})["sweep"].items():
                    row["sweep"][lr] = row["sweep"].get(lr, []) + runs
    else:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        found = measure(args)
        Path(args.out).write_text(json.dumps(found, default=_json_float))
    print(f"\n{found['command']}  ({found['date']}, commit {found['commit']}, {found.get('seconds', 0):.0f} s)\n")
    print(table(found, args.steps_for_table))
    print()
    print(band_table(found, args.steps_for_table))
    print()
    print(band_candidates(found))

if __name__ == "__main__":
    main()
