"""What a search buys: best-so-far validation accuracy against cumulative epochs trained, for grid, random, TPE,
TPE + Hyperband, TPE + ASHA (first rung after 1 or after 3 epochs) and random + ASHA, 27 trials per search,
several sampler seeds, on two tasks (LeNet-5 on the bundled digits, ResNet-20 on generated shapes).

    OMP_NUM_THREADS=1 python scripts/bench_search.py run --task lenet --seeds 20 --out outputs/bench_search
    OMP_NUM_THREADS=1 python scripts/bench_search.py run --task resnet20 --seeds 20 --out outputs/bench_search
    python scripts/bench_search.py report --out outputs/bench_search --plot docs/lab/img/search-savings.png

The searches are cnnlab's own: samplers and pruners come from `cnnlab.search.study.build_sampler` /
`build_pruner` on a search section like configs/base/search.yaml's, on an in-memory Optuna study asked and told
trial by trial as a cnnlab-tune worker does. Each trial is an ordinary `cnnlab.run.lifecycle.train` run (the
function cnnlab-train and cnnlab-tune's trials call) with a callback that reports val/acc after every epoch and
stops the run when the pruner says so; what differs from cnnlab-tune is only that the run dirs are temporary.

The space is the search lesson's (learning rate 1e-4..1 and weight decay of SGD with momentum, on log scales),
on a lattice: log10(lr) in steps of 0.25 from -4 to 0 and weight decay 1e-5, 1e-3 or 1e-1 (17 x 3 points; the
grid takes every other lr, 9 x 3 = 27 points of it). On a lattice the same training
is asked for again and again (by the grid's five orders, by the seeds of one sampler, by random search with
and without pruning, which draw the same values), so a cache keeps each training's validation curve:
(task, lr, wd) -> val/acc after epochs 1..k. Every trial trains with the same training seed and no learning-rate
schedule (scheduler=none), so training is deterministic given the values, and its first e epochs are the same
whether it is stopped after e or trained to 9: a trial read from the cache reports exactly what training it
again would. The epochs a search is charged are those its trials would have trained (a pruned trial: up to
its pruning epoch), never what the cache saved. A cache miss trains the run (pruned or to the end), and a
cached curve shorter than a trial needs is trained again from the start.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from cnnlab.engine.callbacks import Callback
from cnnlab.errors import TrainingStopped
from cnnlab.search.space import Param
from cnnlab.search.study import build_pruner, build_sampler

MAX_EPOCHS = 9  # rungs 1 / 3 / 9 with reduction factor 3
COMMON = ["augment=none", "scheduler=none", "optimizer=sgd", "optimizer.momentum=0.9", "logger=none",
          "trainer.progress=none", "trainer.summary=none", "trainer.device=cpu",
          f"trainer.max_epochs={MAX_EPOCHS}"]
TASKS = {
    # the bundled 1,797 digits (1,437 training, 180 validation images), 28x28
    "lenet": ["data=digits", "model=lenet5", *COMMON],
    # 1,200 generated shapes at 16x16 (960 training, 120 validation images), 8 classes
    "resnet20": ["data=shapes", "data.num_samples=1200", "data.image_size=16", "data.input_size=[16,16]",
                 "data.batch_size=32", "model=resnet20", *COMMON],
}
# log10 of the learning rate and of the weight decay, on the lattice every search draws from
SPACE = {"lr_exp": FloatDistribution(-4.0, 0.0, step=0.25), "wd_exp": FloatDistribution(-5.0, -1.0, step=2.0)}
GRID = {"lr_exp": [-4.0 + 0.5 * i for i in range(9)], "wd_exp": [-5.0, -3.0, -1.0]}
PRUNER = {"min_resource": 1, "reduction_factor": 3, "min_early_stopping_rate": 0, "n_startup_trials": 5}
SEARCHES = {  # name: (sampler, pruner, pruner keys other than PRUNER's)
    "grid": ("grid", "none", {}),
    "random": ("random", "none", {}),
    "tpe": ("tpe", "none", {}),
    "tpe_hyperband": ("tpe", "hyperband", {}),
    "tpe_asha": ("tpe", "asha", {}),
    "tpe_asha_rate1": ("tpe", "asha", {"min_early_stopping_rate": 1}),  # rungs after 3 and 9 epochs
    "random_asha": ("random", "asha", {}),
}
LABELS = {"grid": "grid", "random": "random", "tpe": "TPE", "tpe_hyperband": "TPE + Hyperband",
          "tpe_asha": "TPE + ASHA", "tpe_asha_rate1": "TPE + ASHA, first rung after 3 epochs",
          "random_asha": "random + ASHA"}


def search_section(sampler: str, pruner: str, seed: int, **keys) -> dict:
    """The search section cnnlab-tune would resolve from configs/base/search.yaml with these choices."""
    return {"seed": seed, "sampler": {"name": sampler, "n_startup_trials": 5},
            "pruner": {"name": pruner, **PRUNER, **keys}}


def params(sampler: str) -> list[Param]:
    if sampler == "grid":  # build_sampler reads a grid's values from its parameters
        return [Param(n, n, False, optuna.distributions.CategoricalDistribution(v)) for n, v in GRID.items()]
    return [Param(n, n, False, d) for n, d in SPACE.items()]


def overrides_of(values: dict) -> list[str]:
    return [f"optimizer.lr={10 ** values['lr_exp']!r}", f"optimizer.weight_decay={10 ** values['wd_exp']!r}"]


class Cache:
    """(task, lr_exp, wd_exp) -> {"curve": val/acc after epochs 1..k, "failed": the run failed after them}."""

    def __init__(self, path: Path):
        self.path = path
        self.runs: dict[tuple, dict] = {}
        self.trained_epochs = 0  # epochs this process trained (the benchmark's own cost, not a search's)
        if path.exists():
            for line in path.read_text().splitlines():
                row = json.loads(line)
                self._keep(tuple(row["key"]), row)

    def _keep(self, key, row):
        old = self.runs.get(key)
        if old is None or len(row["curve"]) > len(old["curve"]) or row["failed"]:
            self.runs[key] = {"curve": row["curve"], "failed": row["failed"]}

    def get(self, key) -> dict | None:
        return self.runs.get(key)

    def put(self, key, curve: list[float], failed: bool) -> None:
        row = {"key": list(key), "curve": curve, "failed": failed}
        self._keep(key, row)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


class Report(Callback):
    """cnnlab.search.trial.PruningReport's work for the benchmark: report val/acc after each epoch past those
    already reported, and stop when the pruner says so (never after the last epoch)."""

    def __init__(self, ask, start: int):
        self.ask, self.start, self.curve, self.pruned = ask, start, [], False

    def on_epoch_end(self, trainer, metrics: dict) -> None:
        self.curve.append(float(metrics["val/acc"]))
        if trainer.epoch > self.start and self.ask(trainer.epoch, self.curve[-1]):
            self.pruned = True
            trainer.should_stop = True


def train_curve(task: str, values: dict, ask, start: int, work: Path) -> tuple[list[float], bool]:
    """Train one run; returns (val/acc after each epoch it trained, whether it failed)."""
    from cnnlab.config.compose import compose_config
    from cnnlab.run.lifecycle import train

    overrides = [*TASKS[task], *overrides_of(values)]
    run_dir = Path(tempfile.mkdtemp(dir=work))
    report = Report(ask, start)
    failed = False
    try:
        train(compose_config(overrides, run_dir, config_name="train"), overrides, (report,))
    except (TrainingStopped, KeyboardInterrupt):  # Ctrl-C or SIGTERM: the benchmark stops
        raise
    except Exception as error:  # a diverged run is a failed trial, as in cnnlab-tune
        print(f"{task} {values} failed: {str(error).splitlines()[0]}", flush=True)
        failed = True
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return report.curve, failed


def run_trial(trial: optuna.Trial, task: str, cache: Cache, work: Path, fake: bool) -> tuple[TrialState, float | None, int]:
    """One trial: its values, then its curve epoch by epoch (from the cache while it reaches, then trained).
    Returns (state, value, epochs this trial trained)."""
    values = {n: trial.suggest_float(n, d.low, d.high, step=d.step) for n, d in SPACE.items()}
    key = (task, round(values["lr_exp"], 4), round(values["wd_exp"], 4))

    def ask(epoch: int, value: float) -> bool:
        if not math.isfinite(value):
            return False
        trial.report(value, epoch)
        return epoch < MAX_EPOCHS and trial.should_prune()

    cached = cache.get(key) or {"curve": [], "failed": False}
    curve = cached["curve"]
    for epoch, value in enumerate(curve, start=1):
        if ask(epoch, value):
            return TrialState.PRUNED, None, epoch
    if not (cached["failed"] or len(curve) == MAX_EPOCHS):  # the cache does not reach far enough: train
        done = len(curve)
        curve, failed = (fake_curve(values, ask, done) if fake else train_curve(task, values, ask, done, work))
        cache.trained_epochs += len(curve)
        cache.put(key, curve, failed)
        if not failed and len(curve) < MAX_EPOCHS:
            return TrialState.PRUNED, None, len(curve)
        cached = {"curve": curve, "failed": failed}
    finite = [v for v in curve if math.isfinite(v)]
    if cached["failed"] or not finite:
        return TrialState.FAIL, None, len(curve)
    return TrialState.COMPLETE, max(finite), len(curve)  # the trial's value: its best epoch, as in cnnlab-tune


def fake_curve(values, ask, start) -> tuple[list[float], bool]:
    """A synthetic curve (--fake): checks the machinery and counts the trainings without training."""
    best = math.exp(-((values["lr_exp"] + 1.8) ** 2) / 2 - ((values["wd_exp"] + 4) ** 2) / 20)
    curve = []
    for epoch in range(1, MAX_EPOCHS + 1):
        curve.append(0.1 + 0.85 * best * (1 - math.exp(-epoch / 3)))
        if epoch > start and ask(epoch, curve[-1]):
            break
    return curve, False


def run_search(task: str, name: str, seed: int, n_trials: int, cache: Cache, work: Path, fake: bool) -> dict:
    sampler_name, pruner_name, keys = SEARCHES[name]
    search = search_section(sampler_name, pruner_name, seed, **keys)
    study = optuna.create_study(direction="maximize", sampler=build_sampler(search, params(sampler_name)),
                                pruner=build_pruner(search, MAX_EPOCHS))
    rows, epochs = [], 0
    for _ in range(n_trials):
        trial = study.ask()
        state, value, trained = run_trial(trial, task, cache, work, fake)
        study.tell(trial, value, state=state)
        epochs += trained
        best = study.best_value if any(t.state == TrialState.COMPLETE for t in study.trials) else None
        rows.append({"state": state.name, "epochs": trained, "cum_epochs": epochs, "value": value, "best": best,
                     "lr": 10 ** trial.params["lr_exp"], "wd": 10 ** trial.params["wd_exp"]})
    return {"task": task, "search": name, "seed": seed, "trials": rows}


def run(args) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("cnnlab").setLevel(logging.WARNING)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = out / "runs"
    work.mkdir(exist_ok=True)
    cache = Cache(out / f"cache-{args.task}{'-fake' if args.fake else ''}.jsonl")
    results = out / f"results-{args.task}{'-fake' if args.fake else ''}.jsonl"
    done = set()
    if results.exists():
        done = {(r["search"], r["seed"]) for r in map(json.loads, results.read_text().splitlines())
                if len(r["trials"]) == args.trials}
    started = time.perf_counter()
    for seed in range(args.seeds):  # seeds outermost: a stopped benchmark leaves whole seeds of every search
        for name in args.searches.split(","):
            if (name, seed) in done:
                continue
            t0, trained0 = time.perf_counter(), cache.trained_epochs
            result = run_search(args.task, name, seed, args.trials, cache, work, args.fake)
            with results.open("a") as f:
                f.write(json.dumps(result) + "\n")
            last = result["trials"][-1]
            print(f"{args.task} seed {seed} {name:14s} best {last['best'] or float('nan'):.4f}  epochs {last['cum_epochs']:4d}  "
                  f"trained now {cache.trained_epochs - trained0:4d}  {time.perf_counter() - t0:6.1f} s  "
                  f"(total {time.perf_counter() - started:.0f} s)", flush=True)


# ---- the report: table and plot from the results files ----

@dataclass
class Curves:
    epochs: np.ndarray         # 0..longest search's total epochs
    best: np.ndarray           # (seeds, epochs): best-so-far after that many epochs (nan before a first result)
    totals: list[int]
    finals: list[float]


def curves(results: list[dict]) -> Curves:
    totals = [r["trials"][-1]["cum_epochs"] for r in results]
    grid = np.arange(0, max(totals) + 1)
    best = np.full((len(results), len(grid)), np.nan)
    for i, r in enumerate(results):
        for t in r["trials"]:
            if t["best"] is not None:
                best[i, t["cum_epochs"]:] = t["best"]
    return Curves(grid, best, totals, [r["trials"][-1]["best"] for r in results])


def mean_curve(c: Curves, upto: int) -> np.ndarray:
    """Mean over seeds at each epoch count, once every seed has a result; a finished seed keeps its final best."""
    b = c.best
    if b.shape[1] < upto + 1:
        b = np.concatenate([b, np.repeat(b[:, -1:], upto + 1 - b.shape[1], axis=1)], axis=1)
    return b[:, :upto + 1].mean(axis=0)  # nan until every seed has a completed trial


def each_search(searches: dict[str, list[dict]]):
    """(name, its curves, the mean over seeds of best-so-far at each epoch count) for each search run, in order."""
    for name in SEARCHES:
        if name in searches:
            c = curves(searches[name])
            yield name, c, mean_curve(c, int(max(c.totals)))


def load_results(out: Path) -> dict[str, dict[str, list[dict]]]:
    by = {}
    for path in sorted(out.glob("results-*.jsonl")):
        if path.stem.endswith("-fake") != FAKE_REPORT:
            continue
        for r in map(json.loads, path.read_text().splitlines()):
            by.setdefault(r["task"], {}).setdefault(r["search"], []).append(r)
    return by


FAKE_REPORT = False


def report(args) -> None:
    global FAKE_REPORT
    FAKE_REPORT = args.fake
    by = load_results(Path(args.out))
    lines = []
    for task, searches in by.items():
        random = curves(searches["random"]) if "random" in searches else None
        target = float(np.mean(random.finals)) if random else None
        random_total = float(np.mean(random.totals)) if random else None
        lines.append(f"\n{task}: target = random search's final best, mean over seeds = {target:.4f}; random "
                     f"search trains {random_total:.0f} epochs\n")
        lines.append("| search | seeds | final best (mean ± std) | epochs to reach the target (share of random's) | "
                     f"seeds at the target after {int(random_total // 3)} epochs (1/3) | epochs in all | pruned trials |")
        lines.append("|---|---|---|---|---|---|---|")
        third = int(random_total // 3)
        for name, c, m in each_search(searches):
            reach = np.flatnonzero(m >= target - 1e-9) if target is not None else []
            reach_s = (f"{int(reach[0])} ({reach[0] / random_total:.0%})" if len(reach) else "not reached")
            pruned = np.mean([sum(t["state"] == "PRUNED" for t in r["trials"]) for r in searches[name]])
            at_third = c.best[:, min(third, c.best.shape[1] - 1)]  # a seed that finished early keeps its final best
            hits = int(np.sum(np.nan_to_num(at_third, nan=-1.0) >= target - 1e-9))
            lines.append(f"| {LABELS[name]} | {len(c.finals)} | {np.mean(c.finals):.4f} ± {np.std(c.finals):.4f} | "
                         f"{reach_s} | {hits} of {len(c.finals)} | {np.mean(c.totals):.0f} | {pruned:.1f} |")
    text = "\n".join(lines)
    print(text)
    if args.table:
        Path(args.table).write_text(text.lstrip() + "\n")
    if args.plot:
        plot(by, Path(args.plot))


def plot(by: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = {"lenet": "LeNet-5 on the digits", "resnet20": "ResNet-20 on shapes (16 px, 960 images)"}
    styles = {"grid": ("tab:gray", ":"), "random": ("black", "-"), "tpe": ("tab:blue", "-"),
              "tpe_hyperband": ("tab:orange", "-"), "tpe_asha": ("tab:red", "-"),
              "tpe_asha_rate1": ("tab:purple", "-"), "random_asha": ("tab:green", "--")}
    fig, axes = plt.subplots(1, len(by), figsize=(6.2 * len(by), 4.6), squeeze=False)
    for ax, (task, searches) in zip(axes[0], by.items()):
        random = curves(searches["random"])
        target, total = float(np.mean(random.finals)), float(np.mean(random.totals))
        for name, c, m in each_search(searches):
            color, ls = styles[name]
            ax.plot(c.epochs, m, color=color, ls=ls, lw=1.6,
                    label=f"{LABELS[name]} ({len(c.finals)} seeds)")
        ax.axhline(target, color="black", lw=0.7, ls="--")
        ax.axvline(total / 3, color="black", lw=0.7, ls="-.")
        top = np.nanmax([np.nanmax(m) for _, _, m in each_search(searches)])
        ax.set_ylim(target - 0.12, top + 0.01)  # the race near the top; the first trials' low values lie below
        ax.annotate("random's final best", (total, target), xytext=(-4, 4), textcoords="offset points",
                    ha="right", fontsize=8)
        ax.annotate("1/3 of random's epochs", (total / 3, target - 0.12), xytext=(4, 6),
                    textcoords="offset points", fontsize=8, rotation=90)
        ax.set_title(f"{titles.get(task, task)}: 27 trials per search")
        ax.set_xlabel("epochs trained, all trials so far (cumulative)")
        ax.set_ylabel("best val/acc so far (mean over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7.5, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the searches of one task (continues where an earlier run stopped)")
    r.add_argument("--task", choices=sorted(TASKS), required=True)
    r.add_argument("--seeds", type=int, default=5)
    r.add_argument("--trials", type=int, default=27)
    r.add_argument("--searches", default=",".join(SEARCHES))
    r.add_argument("--out", default="outputs/bench_search")
    r.add_argument("--fake", action="store_true", help="a synthetic objective instead of training (a dry run)")
    p = sub.add_parser("report", help="the table and the plot from the results")
    p.add_argument("--out", default="outputs/bench_search")
    p.add_argument("--table", default=None)
    p.add_argument("--plot", default=None)
    p.add_argument("--fake", action="store_true")
    args = parser.parse_args()
    run(args) if args.command == "run" else report(args)


if __name__ == "__main__":
    main()
