"""Whole-run wall time: the default `cnnlab-train` run against scripts/hand_lenet.py, process start to exit.

The target: the default run takes at most 1.10x the wall time of a hand-written script that imports torch,
loads the same digits and trains the same epochs. Unlike scripts/benchmark.py (the training loop alone, in
one process) this counts everything a user waits for: interpreter start, imports, Hydra config composition,
data loading, training, validation, checkpoints, TensorBoard, the test pass and shutdown.

Each round runs both commands as fresh subprocesses of the same interpreter (sys.executable), in ABBA order
(cnnlab first in rounds 1, 3, 5, ..., hand first in rounds 2, 4, ...) so drift in machine speed hits both sides alike. Wall
time is time.perf_counter() around subprocess.run, from spawn to exit. cnnlab writes its run dir into a
temporary directory (paths.output_root=<tmp>), which is deleted afterwards. The result is the median of the
per-round ratios cnnlab/hand.

    python scripts/bench_startup.py                        # default run: 5 rounds of 20 epochs (~2 minutes)
    python scripts/bench_startup.py --rounds 3 --epochs 5
    python scripts/bench_startup.py logger.enabled=false   # extra arguments are cnnlab overrides
    python scripts/bench_startup.py --hand-gc-freeze       # baseline that also uses gc.freeze()
    python scripts/bench_startup.py --against-src ../before/src   # cnnlab before/after a change, same ABBA rounds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _bench import quartiles

HAND_SCRIPT = Path(__file__).resolve().parent / "hand_lenet.py"
TARGET = 1.10


def run_timed(cmd: list[str], label: str, env: dict | None = None) -> float:
    """Run cmd to completion; returns its wall time in seconds. Exits with its output tails if it fails."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.stdout.flush()
        print(f"\n{label} failed with exit status {proc.returncode}: {' '.join(cmd)}", file=sys.stderr)
        # cnnlab logs errors to the console handler, which is stdout; tracebacks go to stderr.
        for name, text in (("stdout", proc.stdout), ("stderr", proc.stderr)):
            print(f"--- {name} (last 20 lines) ---", file=sys.stderr)
            print("\n".join(text.splitlines()[-20:]), file=sys.stderr)
        sys.exit(1)
    return seconds


def epochs_completed(output_root: Path) -> list[int]:
    """Epochs each cnnlab run trained, from its metrics.json (early stopping may end a run sooner)."""
    return [json.loads(p.read_text()).get("epochs_completed") for p in sorted(output_root.rglob("metrics.json"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="ABBA rounds (default 5)")
    parser.add_argument("--epochs", type=int, default=20, help="epochs on both sides (default 20 = the default run)")
    parser.add_argument("--hand-gc-freeze", action="store_true",
                        help="give the hand script cnnlab's gc.freeze() start-up trick too (a stricter baseline)")
    parser.add_argument("--against-src", metavar="DIR",
                        help="instead of the hand script, the same cnnlab command run from another source tree's "
                             "src/ (e.g. a git worktree of an earlier commit): before/after a change")
    parser.add_argument("overrides", nargs="*", help="extra cnnlab config overrides, e.g. trainer.progress=none")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="cnnlab-bench-") as tmp:
        output_root = Path(tmp)
        cnnlab_cmd = [sys.executable, "-m", "cnnlab.train", f"trainer.max_epochs={args.epochs}",
                      f"paths.output_root={output_root}", *args.overrides]
        hand_cmd = [sys.executable, str(HAND_SCRIPT), "--epochs", str(args.epochs)]
        if args.hand_gc_freeze:
            hand_cmd.append("--gc-freeze")
        hand_env = None
        if args.against_src:  # the baseline is cnnlab itself, imported from the other tree (its configs/ beside it)
            hand_cmd = cnnlab_cmd
            hand_env = dict(os.environ, PYTHONPATH=str(Path(args.against_src).resolve()))
        print(f"cnnlab: {' '.join(cnnlab_cmd)}")
        print(f"hand:   {' '.join(hand_cmd)}")
        load_before = os.getloadavg()[0]
        print(f"{args.rounds} rounds, ABBA order; 1-min load average {load_before:.2f} "
              "(anything else using the CPU skews both sides: run on an idle machine)\n")
        print(f"{'round':>5}  {'order':<13}  {'cnnlab s':>8}  {'hand s':>7}  {'ratio':>6}")

        cnnlab_s, hand_s, ratios = [], [], []
        for r in range(args.rounds):
            cnnlab_first = r % 2 == 0
            if cnnlab_first:
                c = run_timed(cnnlab_cmd, "cnnlab")
                h = run_timed(hand_cmd, "hand", hand_env)
            else:
                h = run_timed(hand_cmd, "hand", hand_env)
                c = run_timed(cnnlab_cmd, "cnnlab")
            cnnlab_s.append(c)
            hand_s.append(h)
            ratios.append(c / h)
            order = "cnnlab, hand" if cnnlab_first else "hand, cnnlab"
            print(f"{r + 1:>5}  {order:<13}  {c:>8.2f}  {h:>7.2f}  {c / h:>6.3f}", flush=True)
        epochs = epochs_completed(output_root)
        load_after = os.getloadavg()[0]

    c_q = quartiles(cnnlab_s)
    h_q = quartiles(hand_s)
    r_q = quartiles(ratios)
    verdict = "meets" if r_q[1] <= TARGET else "misses"
    print()
    print(f"Whole run, process start to exit: {args.rounds} ABBA rounds, {args.epochs} epochs, "
          f"python {platform.python_version()} on {platform.machine()}"
          + (f", overrides: {' '.join(args.overrides)}" if args.overrides else ""))
    print(f"cnnlab epochs completed per run: {epochs}; 1-min load average {load_before:.2f} before, "
          f"{load_after:.2f} after")
    print()
    print("| side | median wall s | Q1 | Q3 |")
    print("|---|---|---|---|")
    print(f"| cnnlab (`python -m cnnlab.train`) | {c_q[1]:.2f} | {c_q[0]:.2f} | {c_q[2]:.2f} |")
    baseline = f"baseline (cnnlab from {args.against_src})" if args.against_src else "hand (`scripts/hand_lenet.py`)"
    print(f"| {baseline} | {h_q[1]:.2f} | {h_q[0]:.2f} | {h_q[2]:.2f} |")
    other = "baseline" if args.against_src else "hand"
    print(f"| ratio cnnlab/{other} (per round) | {r_q[1]:.3f} | {r_q[0]:.3f} | {r_q[2]:.3f} |")
    print(f"| ratio of the medians | {c_q[1] / h_q[1]:.3f} | | |")
    print()
    print(f"median cnnlab {c_q[1]:.2f} s, median {other} {h_q[1]:.2f} s, "
          f"median ratio {r_q[1]:.3f} (Q1 {r_q[0]:.3f}, Q3 {r_q[2]:.3f}): {verdict} the {TARGET:.2f}x target")


if __name__ == "__main__":
    main()
