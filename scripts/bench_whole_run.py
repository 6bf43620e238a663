"""A whole ResNet-20 run, cnnlab by default against a textbook fp32 script, process start to exit, over seeds.

The cnnlab side is the command a user types, with cnnlab's defaults for everything it does not name
(trainer.precision=auto, channels_last=auto, the fast data path):

    cnnlab-train model=resnet20 data=shapes augment=basic optimizer=sgd scheduler=none trainer.max_epochs=3 logger=none seed=S

the baseline is scripts/textbook_train.py --epochs 3 --seed S (per-sample DataLoader with 2 workers, pad-4 crop and
flip, fp32, NCHW; the same images, split, network, initial weights, optimizer settings and batch). For each seed
both run as fresh processes, `--rounds` times, in ABBA order (cnnlab first in even rounds of even-numbered seeds,
second in odd ones), each timed from spawn to exit: what a user waits for, start-up included. Reported: each pair's
wall times, their ratio and test accuracies; the median ratio over all pairs with quartiles; mean ± std test
accuracy of each side over seeds (a CPU run repeats its seed's accuracy, so rounds add timings, not accuracies);
the load average before and after, and the threads torch uses. Target: median ratio <= 0.6 with no loss of
accuracy. Run it on an idle machine, without OMP_NUM_THREADS: both sides use every core.

    python scripts/bench_whole_run.py [--seeds 0 1 2] [--rounds 1] [--epochs 3] [--json PATH]
        [--cnnlab-override KEY=VALUE ...]   # e.g. trainer.precision=32: the fp32-against-fp32 pair
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from _bench import abba, loadavg, quartiles

SCRIPTS = Path(__file__).resolve().parent
TARGET = 0.6
CNNLAB_ARGS = ["model=resnet20", "data=shapes", "augment=basic", "optimizer=sgd", "scheduler=none", "logger=none"]


def timed(cmd: list[str], env: dict) -> tuple[float, str]:
    """(wall seconds from spawn to exit, stdout); exits with the output's tail if the command fails."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {shlex.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return seconds, proc.stdout


def cnnlab_result(run_dir: Path) -> dict:
    """Test accuracy and the precision the run trained at, from its metrics.json (the resolved config's
    trainer.precision where metrics.json does not record it)."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    precision = metrics.get("precision")
    if precision is None:
        precision = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())["trainer"]["precision"]
    return {"acc": metrics["test/acc"], "precision": str(precision), "best_epoch": metrics.get("best_epoch")}


def textbook_result(stdout: str) -> dict:
    """Test accuracy, final training loss and best epoch from textbook_train.py's JSON line (its last)."""
    line = json.loads(stdout.strip().splitlines()[-1])
    return {"acc": line["test_acc"], "train_loss": line["train_loss"], "best_epoch": line.get("best_epoch")}


def summary(rows: list[dict]) -> dict:
    """Median ratio with quartiles over all rows; test accuracy mean and std over seeds (one value per seed: the
    first row of each)."""
    ratios = [r["cnnlab_s"] / r["textbook_s"] for r in rows]
    per_seed = {r["seed"]: r for r in reversed(rows)}  # the first row of each seed wins
    acc = {side: [r[f"{side}_acc"] for r in per_seed.values()] for side in ("cnnlab", "textbook")}
    spread = {side: statistics.stdev(v) if len(v) > 1 else 0.0 for side, v in acc.items()}
    q = quartiles(ratios)
    return {"ratio_quartiles": q, "acc_mean": {s: statistics.mean(v) for s, v in acc.items()},
            "acc_std": spread, "seeds": len(per_seed), "pairs": len(rows), "meets": q[1] <= TARGET}


def table(rows: list[dict]) -> str:
    lines = ["| seed | round | order | cnnlab s | textbook s | ratio | cnnlab test acc | textbook test acc |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['round']} | {r['order']} | {r['cnnlab_s']:.1f} | {r['textbook_s']:.1f} | "
                     f"{r['cnnlab_s'] / r['textbook_s']:.3f} | {r['cnnlab_acc']:.4f} | {r['textbook_acc']:.4f} |")
    s = summary(rows)
    q1, median, q3 = s["ratio_quartiles"]
    lines += ["", f"median ratio cnnlab/textbook **{median:.3f}** (quartiles {q1:.3f}-{q3:.3f}, {s['pairs']} pairs): "
              f"{'meets' if s['meets'] else 'misses'} the {TARGET}x target; test accuracy over {s['seeds']} seeds "
              f"cnnlab {s['acc_mean']['cnnlab']:.4f} ± {s['acc_std']['cnnlab']:.4f}, textbook "
              f"{s['acc_mean']['textbook']:.4f} ± {s['acc_std']['textbook']:.4f}"]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=1, help="pairs per seed, alternating which side goes first")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--cnnlab-override", action="append", default=[],
                        help="extra cnnlab override (e.g. trainer.precision=32 for the fp32-vs-fp32 pair)")
    parser.add_argument("--textbook-arg", action="append", default=[],
                        help="extra textbook_train.py argument (e.g. --limit-batches=2, for tests)")
    args = parser.parse_args()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(SCRIPTS.parent / "src"),
                                                                  os.environ.get("PYTHONPATH", "")) if p))
    cnnlab_cmd = [sys.executable, "-m", "cnnlab.cli.train", *CNNLAB_ARGS, f"trainer.max_epochs={args.epochs}",
                  *args.cnnlab_override]
    textbook_cmd = [sys.executable, str(SCRIPTS / "textbook_train.py"), "--epochs", str(args.epochs),
                    *args.textbook_arg]
    machine = {"torch": torch.__version__, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
               "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "load_before": loadavg()}
    print(f"cnnlab:   {shlex.join(cnnlab_cmd[1:])} seed=S\ntextbook: {shlex.join(textbook_cmd[1:])} --seed S\n"
          f"torch {machine['torch']}, {machine['cores']} cores, {machine['torch_threads']} torch threads "
          f"(OMP_NUM_THREADS={machine['OMP_NUM_THREADS'] or 'unset'}); load average before {machine['load_before']}",
          flush=True)
    rows, numbers = [], itertools.count()
    with tempfile.TemporaryDirectory(prefix="bench-whole-run-") as tmp:
        for i, seed in enumerate(args.seeds):
            def cnnlab():
                run_dir = Path(tmp) / f"cnnlab-{next(numbers)}"
                seconds, _ = timed([*cnnlab_cmd, f"seed={seed}", f"hydra.run.dir={run_dir}"], env)
                return seconds, cnnlab_result(run_dir)

            def textbook():
                seconds, out = timed([*textbook_cmd, "--seed", str(seed)], env)
                return seconds, textbook_result(out)

            # odd-numbered seeds start with the textbook side: over seeds and rounds the order is ABBA
            a, b = (cnnlab, textbook) if i % 2 == 0 else (textbook, cnnlab)
            ra, rb = abba(args.rounds, a, b)
            mine, theirs = (ra, rb) if a is cnnlab else (rb, ra)
            for r, ((c_s, c), (t_s, t)) in enumerate(zip(mine, theirs)):
                first = "cnnlab" if (i + r) % 2 == 0 else "textbook"
                rows.append({"seed": seed, "round": r, "order": f"{first} first", "cnnlab_s": c_s, "textbook_s": t_s,
                             "cnnlab_acc": c["acc"], "textbook_acc": t["acc"], "cnnlab_precision": c["precision"],
                             "cnnlab_best_epoch": c["best_epoch"], "textbook_best_epoch": t["best_epoch"],
                             "textbook_train_loss": t["train_loss"]})
                print(f"  seed {seed} round {r}: cnnlab {c_s:.1f} s ({c['precision']}), textbook {t_s:.1f} s",
                      file=sys.stderr, flush=True)
    machine["load_after"] = loadavg()
    print(f"load average after {machine['load_after']}; cnnlab precision: "
          f"{', '.join(sorted({r['cnnlab_precision'] for r in rows}))}")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps({"epochs": args.epochs, "rounds": args.rounds,
                                         "cnnlab_overrides": args.cnnlab_override,
                                         "commands": {"cnnlab": shlex.join(cnnlab_cmd),
                                                      "textbook": shlex.join(textbook_cmd)},
                                         "machine": machine, "rows": rows, "summary": summary(rows)}, indent=1) + "\n")


if __name__ == "__main__":
    main()
