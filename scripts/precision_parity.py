"""Does bf16 autocast train the zoo's small models as well as fp32? Test accuracy, final training loss and speed
over seeds, for the evidence behind `trainer.precision=auto` (docs/benchmarks.md, "accuracy parity").

For each case (a zoo model on a bundled data set with a short recipe of its own) and seed, two whole
`python -m cnnlab.cli.train` runs, identical but for `trainer.precision=32` / `bf16`, run side by side, each with one
thread (OMP_NUM_THREADS=1), so that both meet the same load from anything else on the machine. Read back from each
run dir: test/acc and time/cpu_wait_share (metrics.json), the last epoch's train/loss and the median of the
epochs' throughput/img_s (metrics.csv).

Verdict per case: bf16 **holds** when the difference of the mean test accuracies is within max(2 x its standard
error, 0.005), the standard error being sqrt(s_fp32^2 / n + s_bf16^2 / n) over n seeds; else it **differs**. With 3
seeds the standard error is itself rough, hence the floor of half a percentage point (a difference no lesson's
conclusion turns on; runs on a CPU are deterministic, so identical seeds can have stds near 0).

    python scripts/precision_parity.py [--seeds 0 1 2] [--cases resnet20 ...] [--json docs/data/precision_parity.json]
    python scripts/precision_parity.py --table-only [--json ...]     # the table again from the JSON
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_JSON = REPO / "docs" / "data" / "precision_parity.json"
NOISE_FLOOR = 0.005

# name -> (model, data, the recipe's overrides, what the recipe is in a few words)
CASES = {
    "lenet5": ("lenet5", "mnist_sample", [], "the default run (20 epochs)"),
    "convnet": ("convnet", "shapes", ["trainer.max_epochs=8"], "8 epochs"),
    "alexnet_small": ("alexnet_small", "mnist_sample",
                      ["data.max_per_class=200", "augment=none", "optimizer=adam", "optimizer.lr=0.001",
                       "optimizer.weight_decay=0.0", "scheduler=none", "trainer.max_epochs=5"],
                      "the AlexNet lesson's: 2,000 digits, Adam, 5 epochs"),
    "resnet20": ("resnet20", "shapes", ["augment=basic", "trainer.max_epochs=6"], "pad-4 crop + flip, 6 epochs"),
    "vgg11_bn": ("vgg11_bn", "shapes", ["data.num_samples=3000", "trainer.max_epochs=5"], "3,000 images, 5 epochs"),
    "densenet_bc40": ("densenet_bc100", "mnist_sample",
                      ["model.depth=40", "data.max_per_class=200", "data.input_size=[16,16]", "augment=none",
                       "optimizer=sgd", "optimizer.lr=0.1", "optimizer.momentum=0.9", "optimizer.weight_decay=1e-4",
                       "data.batch_size=128", "scheduler=cosine", "trainer.max_epochs=4"],
                      "DenseNet-BC-40, the DenseNet lesson's: 2,000 digits at 16 px, SGD, 4 epochs"),
}
PRECISIONS = ("32", "bf16")


def command(case: str, seed: int, precision: str, run_dir: Path) -> list[str]:
    model, data, recipe, _ = CASES[case]
    return [sys.executable, "-m", "cnnlab.cli.train", f"model={model}", f"data={data}", *recipe, f"seed={seed}",
            f"trainer.precision={precision}", "logger=none", "trainer.progress=none", "trainer.summary=none",
            f"hydra.run.dir={run_dir}"]


def read_run(run_dir: Path) -> dict:
    """The numbers the table needs, from a finished run dir."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return {"test_acc": metrics["test/acc"], "train_loss": float(rows[-1]["train/loss"]),
            "img_s": statistics.median(float(r["throughput/img_s"]) for r in rows),
            "epochs": len(rows), "cpu_wait_share": metrics.get("time/cpu_wait_share"),
            "precision": metrics.get("precision"), "wall_time_s": metrics["wall_time_s"]}


def run_pair(case: str, seed: int, out: Path) -> dict:
    """Both precisions of one case and seed, side by side, one thread each."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    procs = {}
    for precision in PRECISIONS:
        run_dir = out / f"{case}-s{seed}-{precision}"
        log = open(out / f"{case}-s{seed}-{precision}.log", "w")
        procs[precision] = (subprocess.Popen(command(case, seed, precision, run_dir), cwd=REPO, env=env, stdout=log,
                                             stderr=subprocess.STDOUT), run_dir, log)
    records = {}
    for precision, (proc, run_dir, log) in procs.items():
        code = proc.wait()
        log.close()
        if code != 0:
            raise SystemExit(f"{case} seed {seed} precision {precision} failed ({code}): see {log.name}")
        records[precision] = read_run(run_dir)
    return records


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def verdict(fp32: list[float], bf16: list[float]) -> tuple[float, float, str]:
    """(bf16 - fp32 mean difference, the bound it is held to, holds | differs): the rule in the docstring."""
    n = min(len(fp32), len(bf16))
    difference = statistics.mean(bf16) - statistics.mean(fp32)
    se = math.sqrt((mean_std(fp32)[1] ** 2 + mean_std(bf16)[1] ** 2) / n) if n > 1 else 0.0
    bound = max(2 * se, NOISE_FLOOR)
    return difference, bound, "holds" if abs(difference) <= bound else "differs"


def table(results: dict) -> str:
    lines = ["| model | data | recipe | test acc fp32 | test acc bf16 | bf16 - fp32 (bound) | final train loss "
             "fp32 / bf16 | img/s fp32 / bf16 (ratio) | bf16 |", "|---|---|---|---|---|---|---|---|---|"]
    for case, seeds in results.items():
        model, data, _, recipe = CASES[case] if case in CASES else (case, "?", [], "?")
        runs = {p: [seeds[s][p] for s in sorted(seeds)] for p in PRECISIONS}
        acc = {p: [r["test_acc"] for r in runs[p]] for p in PRECISIONS}
        loss = {p: statistics.mean(r["train_loss"] for r in runs[p]) for p in PRECISIONS}
        speed = {p: statistics.median(r["img_s"] for r in runs[p]) for p in PRECISIONS}
        difference, bound, says = verdict(acc["32"], acc["bf16"])
        cells = [f"{m:.4f} ± {s:.4f}" for m, s in (mean_std(acc["32"]), mean_std(acc["bf16"]))]
        name = model if case == model else f"{model} ({case})"
        lines.append(f"| {name} | {data} | {recipe} | {cells[0]} | {cells[1]} | {difference:+.4f} ({bound:.4f}) | "
                     f"{loss['32']:.4f} / {loss['bf16']:.4f} | {speed['32']:,.0f} / {speed['bf16']:,.0f} "
                     f"({speed['bf16'] / speed['32']:.2f}x) | **{says}** |")
    return "\n".join(lines)


def environment() -> dict:
    import torch

    from cnnlab.engine.devices import cpu_bf16_flags

    return {"torch": torch.__version__, "cpu_bf16_flags": cpu_bf16_flags(), "cores": os.cpu_count(),
            "load_average_start": os.getloadavg()[0],
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES))
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--table-only", action="store_true", help="print the table of --json, run nothing")
    parser.add_argument("--out", type=Path, help="where the run dirs go (default: a temp dir)")
    parser.add_argument("--override", action="append", default=[],
                        help="extra training override for every run (e.g. trainer.limit_train_batches=2)")
    args = parser.parse_args()
    if args.table_only:
        print(table(json.loads(args.json.read_text())["results"]))
        return
    out = args.out or Path(tempfile.mkdtemp(prefix="precision_parity-"))
    out.mkdir(parents=True, exist_ok=True)
    if args.override:
        for case in args.cases:
            CASES[case] = (*CASES[case][:2], CASES[case][2] + args.override, CASES[case][3])
    record = {"settings": {"seeds": args.seeds, "cases": {c: CASES[c] for c in args.cases},
                           "threads_per_run": 1, "noise_floor": NOISE_FLOOR},
              "environment": environment(), "results": {}}
    for case in args.cases:
        record["results"][case] = {}
        for seed in args.seeds:
            record["results"][case][seed] = run_pair(case, seed, out)
            print(f"  {case} seed {seed}: " + ", ".join(
                f"{p} acc {r['test_acc']:.4f} loss {r['train_loss']:.4f} {r['img_s']:,.0f} img/s"
                for p, r in record["results"][case][seed].items()), file=sys.stderr, flush=True)
        record["environment"]["load_average_end"] = os.getloadavg()[0]
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=1) + "\n")  # after each case: a stopped run keeps its cases
    print(table(record["results"]))


if __name__ == "__main__":
    main()
