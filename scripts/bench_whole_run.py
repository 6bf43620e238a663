"""A whole ResNet-20 run, cnnlab by default against a textbook fp32 script, process start to exit, over seeds.

The cnnlab side is the command a user types, with cnnlab's defaults for everything it does not name
(trainer.precision=auto, channels_last=auto, the fast data path):

    cnnlab-train model=resnet20 data=shapes augment=basic optimizer=sgd scheduler=none trainer.max_epochs=3 logger=none seed=S

the baseline is scripts/textbook_train.py --epochs 3 --seed S (per-sample DataLoader with 2 workers, pad-4 crop and
flip, fp32, NCHW; the same images, split, network, initial weights, optimizer settings and batch). For each seed
both run as fresh processes in ABBA order (cnnlab first for the 1st, 3rd, ... seed), timed from spawn to exit.
Reported: per-seed wall times, their ratio and test accuracies; the median ratio with quartiles; mean ± std
test accuracy of each side. Target: median ratio <= 0.6 with no loss of accuracy.

    python scripts/bench_whole_run.py [--seeds 0 1 2] [--epochs 3] [--json PATH] [--cnnlab-override KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from _bench import quartiles

SCRIPTS = Path(__file__).resolve().parent
TARGET = 0.6


def timed(cmd: list[str], env: dict) -> tuple[float, str]:
    """(wall seconds from spawn to exit, stdout); exits with the output's tail if the command fails."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return seconds, proc.stdout


def summary(rows: list[dict]) -> dict:
    ratios = [r["cnnlab_s"] / r["textbook_s"] for r in rows]
    acc = {side: [r[f"{side}_acc"] for r in rows] for side in ("cnnlab", "textbook")}
    spread = {side: statistics.stdev(v) if len(v) > 1 else 0.0 for side, v in acc.items()}
    return {"ratio_quartiles": quartiles(ratios), "acc_mean": {s: statistics.mean(v) for s, v in acc.items()},
            "acc_std": spread, "meets": quartiles(ratios)[1] <= TARGET}


def table(rows: list[dict]) -> str:
    lines = ["| seed | order | cnnlab s | textbook s | ratio | cnnlab test acc | textbook test acc |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['order']} | {r['cnnlab_s']:.1f} | {r['textbook_s']:.1f} | "
                     f"{r['cnnlab_s'] / r['textbook_s']:.3f} | {r['cnnlab_acc']:.4f} | {r['textbook_acc']:.4f} |")
    s = summary(rows)
    q1, median, q3 = s["ratio_quartiles"]
    lines += ["", f"median ratio cnnlab/textbook **{median:.3f}** (quartiles {q1:.3f}-{q3:.3f}): "
              f"{'meets' if s['meets'] else 'misses'} the {TARGET}x target; test accuracy cnnlab "
              f"{s['acc_mean']['cnnlab']:.4f} ± {s['acc_std']['cnnlab']:.4f}, textbook "
              f"{s['acc_mean']['textbook']:.4f} ± {s['acc_std']['textbook']:.4f}"]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--cnnlab-override", action="append", default=[],
                        help="extra cnnlab override (e.g. trainer.precision=32 for the fp32-vs-fp32 pair)")
    parser.add_argument("--textbook-arg", action="append", default=[],
                        help="extra textbook_train.py argument (e.g. --limit-batches=2, for tests)")
    args = parser.parse_args()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SCRIPTS.parent / "src"), os.environ.get("PYTHONPATH", "")]))
    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-whole-run-") as tmp:
        for i, seed in enumerate(args.seeds):
            run_dir = Path(tmp) / f"cnnlab-{seed}"
            cnnlab = [sys.executable, "-m", "cnnlab.cli.train", "model=resnet20", "data=shapes", "augment=basic",
                      "optimizer=sgd", "scheduler=none", f"trainer.max_epochs={args.epochs}", "logger=none",
                      f"seed={seed}", f"hydra.run.dir={run_dir}", *args.cnnlab_override]
            textbook = [sys.executable, str(SCRIPTS / "textbook_train.py"), "--epochs", str(args.epochs), "--seed",
                        str(seed), *args.textbook_arg]
            sides = [("cnnlab", cnnlab), ("textbook", textbook)]
            order = sides if i % 2 == 0 else sides[::-1]
            row = {"seed": seed, "order": ", ".join(name for name, _ in order)}
            for name, cmd in order:
                row[f"{name}_s"], out = timed(cmd, env)
                if name == "textbook":
                    row["textbook_acc"] = json.loads(out.strip().splitlines()[-1])["test_acc"]
            metrics = json.loads((run_dir / "metrics.json").read_text())
            row["cnnlab_acc"], row["cnnlab_precision"] = metrics["test/acc"], metrics["precision"]
            rows.append(row)
            print(f"  seed {seed}: cnnlab {row['cnnlab_s']:.1f} s ({row['cnnlab_precision']}), "
                  f"textbook {row['textbook_s']:.1f} s", file=sys.stderr, flush=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.epochs} epochs; load average "
          f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after; cnnlab precision: "
          f"{', '.join(sorted({r['cnnlab_precision'] for r in rows}))}")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps({"epochs": args.epochs, "cnnlab_overrides": args.cnnlab_override,
                                         "rows": rows, "summary": summary(rows),
                                         "load_average": [load_before, os.getloadavg()[0]]}, indent=1) + "\n")


if __name__ == "__main__":
    main()
