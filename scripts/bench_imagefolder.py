"""Large image folders: `cnnlab-train data=imagefolder model=resnet18` in each of its data modes against the plain
torchvision script (scripts/plain_imagefolder.py), at 2k, 20k and 100k 64x64 JPEGs in 100 classes.

Every run is a fresh subprocess of this interpreter, timed from its spawn: the same 30 training batches of 64
(trainer.max_epochs=1 trainer.limit_train_batches=30), one validation and one test pass. Per size, each round
runs every mode once, the order reversed every other round (ABBA), so drift in machine speed hits all alike:

- `first`    cnnlab, data.cache=true with its cache dir emptied before: the run that decodes the folder
- `cached`   cnnlab, data.cache=true on the cache the `first` run built (an untimed run builds it if needed)
- `memory`   cnnlab, data.cache=false: decodes the folder into the process's memory on every run
- `per-sample` cnnlab, data.in_memory=false (and data.cache=false): DataLoader workers decode every image
- `shards`   cnnlab, data=webdataset on tar shards that `cnnlab-shards` wrote once per size (untimed)
- `plain`    the baseline, scripts/plain_imagefolder.py; every ratio is against its run of the same round

A cnnlab without the decoded cache (no data.cache key) runs `first` as its default run and skips `cached`; one
without data=webdataset or the cnnlab-shards command skips `shards`; one without trainer.limit_val_batches /
limit_test_batches evaluates whole splits (the plain script then does too). Each skip prints why.

Measured for each run:
- start to first step: spawn to the end of training step 1. cnnlab runs with trainer.progress=plain
  trainer.log_every_n_steps=1, so it logs a line after every step; the plain script prints one. Both are read
  from the child's stdout as they come and stamped here, so both sides are timed the same way.
- img/s: training images per second from the end of step --warmup-steps to the last step (same stamps).
- wall: spawn to exit.
- peak RSS: /proc/<pid>/status of the run's process and all its descendants (DataLoader workers, decode
  workers) every --sample-ms: the largest sum of VmRSS, with RssAnon and RssFile of that sample. A
  memory-mapped decoded cache or shard file counts as RssFile (page-cache pages, shared, dropped under
  pressure); RssAnon is memory the run owns. Summing RSS counts a page shared by several processes once per
  process (forked workers share the parent's libraries and heap): an upper bound. `main` is the training
  process alone (what /usr/bin/time reports); with --pss-ms, PSS (shared pages counted once) is sampled too.
- decode rate (for `first`): what the cache's "decoded N images ... in S s" log line says; without one,
  images / (median first-step time of `first` - that of `cached`), shown with that difference.

Image folders are generated once (Pillow shapes on noise, deterministic from --seed, in parallel) and kept in
--data-root for later invocations; run dirs, caches and shards go to a temporary directory deleted at the end.

    python scripts/bench_imagefolder.py --sizes 2000 --rounds 1                    # a check: ~4 minutes on 2 cores
    python scripts/bench_imagefolder.py --rounds 3 --markdown /tmp/imagefolder.md  # the full table (an hour or more)
    python scripts/bench_imagefolder.py --sizes 20000 --modes first cached plain --eval-batches 0
    python scripts/bench_imagefolder.py --sizes 100000 --rounds 1 --pss-ms 500    # memory with PSS (slows runs)
    python scripts/bench_imagefolder.py trainer.channels_last=false                # extra cnnlab overrides
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from _bench import loadavg, quartiles as _quartiles  # scripts/_bench.py, beside this script

HERE = Path(__file__).resolve().parent
PLAIN_SCRIPT = HERE / "plain_imagefolder.py"
MODES = ("first", "cached", "memory", "per-sample", "shards", "plain")
EVAL_BATCH = 256
MIB = 1024 * 1024


from _bench_folders import CLASSES, PIXELS, generate_folder, split_sizes  # scripts/_bench_folders.py, beside this script
from _bench_procs import BATCH, Run, TreeMemory, measure  # noqa: F401 (TreeMemory: tests reach it from here)


@dataclass
class Features:
    config_dir: Path
    cache: bool
    eval_limits: bool
    webdataset: bool
    shards_cmd: list[str] | None


def detect(env: dict, shards_cmd: str | None) -> Features:
    """Which of the newer interfaces the cnnlab that the runs import has, read from its config files."""
    probe = subprocess.run([sys.executable, "-c", "from cnnlab.config.compose import CONFIG_DIR; print(CONFIG_DIR)"],
                           capture_output=True, text=True, env=env)
    if probe.returncode != 0:
        sys.exit(f"error: cannot import cnnlab with this interpreter ({sys.executable}): "
                 f"{probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else probe.returncode}")
    cfg = Path(probe.stdout.strip())

    def has_key(rel: str, key: str) -> bool:
        path = cfg / rel
        return path.exists() and re.search(rf"^{key}:", path.read_text(), re.M) is not None

    if shards_cmd:
        command = shlex.split(shards_cmd)
    else:
        command = None
        from importlib.metadata import entry_points
        for ep in entry_points(group="console_scripts"):
            if ep.name == "cnnlab-shards":  # run it with this interpreter, so PYTHONPATH's cnnlab is the one
                command = [sys.executable, "-c", f"import sys; from {ep.module} import {ep.attr} as main; "
                           "sys.argv[0] = 'cnnlab-shards'; sys.exit(main())"]
                break
        if command is None and shutil.which("cnnlab-shards"):
            command = [shutil.which("cnnlab-shards")]
    return Features(cfg, has_key("data/imagefolder.yaml", "cache") or has_key("base/data.yaml", "cache"),
                    has_key("trainer/default.yaml", "limit_val_batches")
                    and has_key("trainer/default.yaml", "limit_test_batches"),
                    (cfg / "data" / "webdataset.yaml").exists(), command)


# ---------------------------------------------------------------- the benchmark

def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")) / MIB
        mem_s = f", {mem:.0f} GiB memory"
    except (OSError, StopIteration):
        mem_s = ""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu}, {os.cpu_count()} cores ({usable} usable){mem_s}, {platform.system()} {platform.release()}"


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """_bench.quartiles of the values that are numbers (img/s is NaN for a run too short to time)."""
    values = [v for v in values if not math.isnan(v)]
    return _quartiles(values) if values else (math.nan,) * 3


def fmt(values: list[float], digits: int = 1, thousands: bool = False) -> str:
    """median, with the quartiles when there are several values."""
    q1, q2, q3 = quartiles(values)
    if math.isnan(q2):
        return "n/a"
    f = (lambda v: f"{v:,.{digits}f}") if thousands else (lambda v: f"{v:.{digits}f}")
    return f(q2) if len(values) < 2 else f"{f(q2)} ({f(q1)}-{f(q3)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000, 100000], help="images per folder")
    parser.add_argument("--rounds", type=int, default=3, help="ABBA rounds per size (default 3)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="runs per round")
    parser.add_argument("--data-root", type=Path, default=Path(tempfile.gettempdir()) / "cnnlab-bench-imagefolder",
                        help="where the generated folders are kept and reused (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="image generator seed (default 0)")
    parser.add_argument("--steps", type=int, default=30, help="training batches per run (default 30)")
    parser.add_argument("--warmup-steps", type=int, default=5, help="steps left out of img/s (default 5)")
    parser.add_argument("--eval-batches", type=int, default=10,
                        help="trainer.limit_val_batches / limit_test_batches (batches of 256) when the installed "
                             "cnnlab has them; 0 = whole splits (default 10)")
    parser.add_argument("--device", default="auto", help="trainer.device and the plain script's --device")
    parser.add_argument("--sample-ms", type=float, default=50, help="memory sampling interval (default 50 ms)")
    parser.add_argument("--pss-ms", type=float, default=0,
                        help="also sample the tree's PSS (shared pages counted once) every N ms; reading it stalls "
                             "each process ~20 ms per GiB, so it slows the runs: measure memory so in an invocation "
                             "of its own (default 0 = off)")
    parser.add_argument("--gen-workers", type=int, default=os.cpu_count() or 2, help="processes generating images")
    parser.add_argument("--shards-cmd", default=None,
                        help="the shard writer, if not the installed cnnlab-shards, e.g. 'python -m cnnlab.cli.shards'")
    parser.add_argument("--shards-args", default="", help="extra arguments for the shard writer")
    parser.add_argument("--shards-overrides", default="""data=webdataset 'data.train_shards="{train}"'""",
                        help="cnnlab overrides of the shards mode; {shards} is the shard folder "
                             "(default: %(default)r)")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table to this file")
    parser.add_argument("--keep", action="store_true", help="keep the run dirs, caches and shards (prints where)")
    parser.add_argument("overrides", nargs="*", help="extra cnnlab overrides for every cnnlab mode")
    args = parser.parse_args()
    if args.rounds < 1 or args.steps < 2 or any(n < CLASSES * 10 for n in args.sizes):
        parser.error(f"--rounds >= 1, --steps >= 2 and every size >= {CLASSES * 10} (10 images per class)")

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    features = detect(env, args.shards_cmd)
    modes = [m for m in MODES if m in args.modes]  # `first` before `cached` in the first round
    notes = []
    if not features.cache:
        notes.append("this cnnlab has no decoded cache (data.cache): `first` is its default run, `cached` and `memory` skipped")
        for mode in ("cached", "memory"):
            if mode in modes:
                modes.remove(mode)
    if "shards" in modes and not (features.webdataset and features.shards_cmd):
        why = ("no data=webdataset config" if not features.webdataset else "") + \
              (" and " if not features.webdataset and not features.shards_cmd else "") + \
              ("no cnnlab-shards command (give --shards-cmd)" if not features.shards_cmd else "")
        notes.append(f"`shards` skipped: this cnnlab has {why}")
        modes.remove("shards")
    eval_batches = args.eval_batches if args.eval_batches > 0 else None
    if eval_batches and not features.eval_limits:
        notes.append(f"--eval-batches {eval_batches} not applied: this cnnlab has no trainer.limit_val_batches / "
                     "limit_test_batches, so both sides validate and test whole splits")
        eval_batches = None
    for note in notes:
        print(f"note: {note}")

    command_line = shlex.join([Path(sys.executable).name, *sys.argv])
    print(f"{command_line}\nmachine: {machine()}; python {platform.python_version()}; "
          f"cnnlab configs {features.config_dir}; load average {loadavg()}")
    print("(anything else using the CPU skews every run: use an idle machine)\n", flush=True)

    args.data_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="cnnlab-bench-if-"))
    results: dict[int, dict[str, list[Run]]] = {}
    try:
        for n in args.sizes:
            print(f"== {n:,} images")
            folder = generate_folder(args.data_root, n, seed=args.seed, workers=args.gen_workers)
            results[n] = run_size(args, features, modes, n, folder, work / f"{n}", env, eval_batches)
    finally:
        if args.keep:
            print(f"run dirs, caches and shards kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    table = render(results, modes, args, features, eval_batches, notes, command_line)
    print("\n" + table)
    if args.markdown:
        args.markdown.write_text(table + "\n")
        print(f"written to {args.markdown}")


def cnnlab_command(args, folder: Path, out: Path, extra: list[str], eval_batches: int | None) -> list[str]:
    cmd = [sys.executable, "-m", "cnnlab.train", "data=imagefolder", f"data.root={folder}", "model=resnet18",
           f"data.input_size=[{PIXELS},{PIXELS}]", "trainer.max_epochs=1", f"trainer.limit_train_batches={args.steps}",
           "trainer.progress=plain", "trainer.log_every_n_steps=1", f"paths.output_root={out}"]
    if args.device != "auto":
        cmd.append(f"trainer.device={args.device}")
    if eval_batches:
        cmd += [f"trainer.limit_val_batches={eval_batches}", f"trainer.limit_test_batches={eval_batches}"]
    return cmd + extra + list(args.overrides)


def run_size(args, features: Features, modes: list[str], n: int, folder: Path, work: Path, env: dict,
             eval_batches: int | None) -> dict[str, list[Run]]:
    work.mkdir(parents=True)
    cache_dir, shards_dir, runs_dir = work / "cache", work / "shards", work / "runs"
    cache_keys = [f"data.cache_dir={cache_dir}"]
    commands = {
        "first": cnnlab_command(args, folder, runs_dir, ["data.cache=true", *cache_keys] if features.cache else [],
                                eval_batches),
        "cached": cnnlab_command(args, folder, runs_dir, ["data.cache=true", *cache_keys], eval_batches),
        "memory": cnnlab_command(args, folder, runs_dir, ["data.cache=false"], eval_batches),
        "per-sample": cnnlab_command(args, folder, runs_dir,
                                     ["data.in_memory=false"] + (["data.cache=false"] if features.cache else []),
                                     eval_batches),
        "plain": [sys.executable, str(PLAIN_SCRIPT), str(folder), "--steps", str(args.steps), "--device", args.device,
                  "--warmup-steps", str(args.warmup_steps), "--out", str(work / "plain")]
                 + (["--eval-batches", str(eval_batches)] if eval_batches else []),
    }
    if "shards" in modes:
        # the same 80/10/10 image counts as the folder's split, as shard sets cnnlab-shards holds out itself
        write = [*features.shards_cmd, str(folder), "--out", str(shards_dir), "--val-fraction", "0.1",
                 "--test-fraction", "0.1", *shlex.split(args.shards_args)]
        print(f"  writing shards (untimed): {shlex.join(write)}", flush=True)
        start = time.perf_counter()
        done = subprocess.run(write, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            sys.exit(f"error: the shard writer failed with exit status {done.returncode}: {shlex.join(write)}\n"
                     + "\n".join((done.stdout + done.stderr).splitlines()[-20:]))
        size = sum(p.stat().st_size for p in shards_dir.rglob("*") if p.is_file())
        print(f"  shards: {size / MIB:,.0f} MiB in {time.perf_counter() - start:.0f} s", flush=True)
        train = json.loads((shards_dir / "cnnlab-shards.json").read_text())["splits"]["train"]["pattern"]
        train = train if "/" in train or ":" in train else str(shards_dir / train)
        shard_overrides = shlex.split(args.shards_overrides.replace("{shards}", str(shards_dir))
                                      .replace("{train}", train))
        # the shards replace the folder: the data= and data.root given here win over the imagefolder ones
        base = cnnlab_command(args, folder, runs_dir, [], eval_batches)
        base = [a for a in base if not a.startswith(("data=", "data.root="))]
        commands["shards"] = base[:3] + shard_overrides + base[3:]
    for mode in modes:
        print(f"  {mode:<10} {shlex.join(commands[mode])}")

    train_images = split_sizes(n, CLASSES)["train"]
    measured = {m: [] for m in modes}

    def one(mode: str) -> Run:
        if mode == "first" and features.cache:
            shutil.rmtree(cache_dir, ignore_errors=True)
        run = measure(commands[mode], mode, env=env, train_images=train_images, warmup=args.warmup_steps,
                      interval=args.sample_ms / 1000, pss_interval=args.pss_ms / 1000)
        m = run.memory
        print(f"  {mode:<10} first step {run.first_step:6.1f} s  {run.img_s:7.1f} img/s  wall {run.wall:6.1f} s  "
              f"peak RSS {m['peak']:7,.0f} MiB (anon {m['anon']:,.0f}, file {m['file']:,.0f}, "
              f"{m['processes']} processes; main {m['main']:,.0f})"
              + (f"  PSS {m['pss']:,.0f} MiB" if m["pss"] is not None else "")
              + (f"  decoded {run.decode_rate():,.0f} img/s" if run.decode_rate() else "") + f"  load {loadavg()}",
              flush=True)
        return run

    if "cached" in modes and "first" not in modes:
        print("  building the cache for `cached` (untimed)", flush=True)
        measure(commands["first"], "cache build", env=env, train_images=train_images, warmup=args.warmup_steps,
                interval=1.0)
    for r in range(args.rounds):
        order = modes if r % 2 == 0 else modes[::-1]
        print(f"  round {r + 1}: {', '.join(order)}", flush=True)
        for mode in order:
            measured[mode].append(one(mode))
    return measured


def render(results, modes, args, features, eval_batches, notes, command_line) -> str:
    """The markdown table: one row per size and mode, medians (quartiles) over rounds, ratios to `plain`."""
    labels = {"first": "cnnlab, first run (builds the cache)" if features.cache else "cnnlab (default run)",
              "cached": "cnnlab, cached run", "memory": "cnnlab, data.cache=false (decoded into memory)",
              "per-sample": "cnnlab, data.in_memory=false",
              "shards": "cnnlab, data=webdataset shards", "plain": "plain torchvision script"}
    pss = args.pss_ms > 0
    lines = [f"`{command_line}`", "",
             f"Machine: {machine()}; python {platform.python_version()}. {args.rounds} ABBA round(s) per size; "
             f"resnet18 at {PIXELS}x{PIXELS}, {args.steps} training batches of {BATCH}, img/s after "
             f"{args.warmup_steps} warm-up steps; validation and test "
             + (f"on {eval_batches} batches of {EVAL_BATCH} each" if eval_batches else "on the whole 10% splits")
             + ". Median (quartiles over rounds); x plain: per round against the plain script's run of that "
             "round, median. Peak RSS: the largest sum of VmRSS over the process tree (RssAnon + RssFile of that "
             "sample); main: the training process alone"
             + ("; PSS: the largest sum of PSS over the tree (shared pages counted once), sampled every "
                f"{args.pss_ms:.0f} ms" if pss else "") + ".", ""]
    lines += [f"Note: {n}." for n in notes] + ([""] if notes else [])
    head = ["images", "run", "start to first step s", "x plain", "peak RSS MiB", "anon + file MiB", "x plain",
            "main MiB"] + (["PSS MiB"] if pss else []) + ["img/s", "x plain", "wall s", "decode img/s"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n, by_mode in results.items():
        plain = by_mode.get("plain")
        med = {m: quartiles([r.first_step for r in runs])[1] for m, runs in by_mode.items()}
        for mode in modes:
            runs = by_mode[mode]

            def ratio(get):
                if not plain or mode == "plain":
                    return ""
                return fmt([get(a) / get(b) for a, b in zip(runs, plain)], 2)

            def mem(key):
                return quartiles([r.memory[key] for r in runs])[1]

            decode = ""
            logged = [r.decode_rate() for r in runs]
            if mode == "first" and features.cache and all(logged):
                decode = fmt(logged, 0, True)
            elif mode == "first" and features.cache and "cached" in med:
                # no log line to read: what building the cache added to the start, with that difference
                extra = med["first"] - med["cached"]
                decode = f"~{n / extra:,.0f} (+{extra:.1f} s)" if extra > 0 else f"n/a ({extra:+.1f} s)"
            row = [f"{n:,}", labels[mode], fmt([r.first_step for r in runs]), ratio(lambda r: r.first_step),
                   fmt([r.memory["peak"] for r in runs], 0, True), f"{mem('anon'):,.0f} + {mem('file'):,.0f}",
                   ratio(lambda r: r.memory["peak"]), f"{mem('main'):,.0f}"]
            if pss:
                row.append(f"{mem('pss'):,.0f}")
            row += [fmt([r.img_s for r in runs], 0, True), ratio(lambda r: r.img_s), fmt([r.wall for r in runs]),
                    decode]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
