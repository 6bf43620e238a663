"""torch.compile against eager on this machine's CPU: what compiling cnnlab's training step costs and repays.

For each case (model, data, batch size, input size) and precision (fp32; bf16 under torch.autocast("cpu",
torch.bfloat16)), a child process trains two copies of the same model (same initial weights, same batches,
channels_last as trainer.channels_last=auto sets it on CPU) with the step cnnlab's Trainer runs -- forward
(under autocast for bf16), cross-entropy on fp32 logits, backward, SGD momentum step -- one copy eager, the
other's forward wrapped in torch.compile as trainer.compile=true does (the optimizer step stays eager):

- compile time: the first compiled round's wall minus `steps` steady compiled steps, less the same excess of
  the eager copy's first round (its own first-use costs). Measured cold (a fresh TORCHINDUCTOR_CACHE_DIR) and
  warm (a second process on the same cache dir: what a sweep's second job, or a search's second trial, pays),
  and "in-process": a second model compiled in the cold process (Hydra's basic launcher runs a sweep's jobs
  one after another in one process);
- steady step time compiled vs eager, alternated round by round (ABBA), median of the paired ratios with
  quartiles;
- the per-epoch gain at the data set's batches per epoch, and the break-even epochs = compile time / gain.

Only the training step is measured: a real run also compiles the evaluation graph (batch norm in eval mode,
no grad) and recompiles for the epoch's last, shorter batch (dynamic batch dimension); cnnlab's own
trainer.compile=true pays those on top (docs/benchmarks.md measures a whole run).

    python scripts/bench_compile.py [--rounds 6] [--steps 5] [--case resnet20:shapes:128 ...] [--json out.json]

A case is MODEL:DATA:BATCH[:SIZE] (SIZE: data.input_size=[SIZE,SIZE]).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import abba, loadavg, quartiles  # noqa: E402  (scripts/: ABBA rounds shared by the benchmarks)
from bench_channels_last import build_with_loader  # noqa: E402  (the same model and batches)

CASES = ("resnet20:shapes:128", "resnet18:shapes:64:64")
PRECISIONS = ("fp32", "bf16")


def parse_case(case: str) -> tuple[str, str, int, list[str]]:
    """(model, data, batch size, config overrides) from MODEL:DATA:BATCH[:SIZE]."""
    parts = case.split(":")
    if len(parts) not in (3, 4):
        raise ValueError(f"case {case!r}: expected MODEL:DATA:BATCH[:SIZE]")
    overrides = [f"data.batch_size={int(parts[2])}"]
    if len(parts) == 4:
        overrides.append(f"data.input_size=[{int(parts[3])},{int(parts[3])}]")
    return parts[0], parts[1], int(parts[2]), overrides


class Side:
    """One copy of the model with its SGD optimizer, eager or with a compiled forward, trained on and on."""

    def __init__(self, template, bf16: bool, compiled: bool):
        self.model = copy.deepcopy(template).to(memory_format=torch.channels_last)
        self.model.train()
        self.forward = torch.compile(self.model) if compiled else self.model
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        self.bf16 = bf16

    def round(self, batches) -> float:
        """Seconds for one pass over `batches`."""
        start = time.perf_counter()
        for x, y in batches:
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                logits = self.forward(x)
                loss = F.cross_entropy(logits.float(), y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        return time.perf_counter() - start


def child(case: str, precision: str, rounds: int, steps: int, in_process: bool) -> dict:
    """One process's measurements (the compile caches are whatever TORCHINDUCTOR_CACHE_DIR holds)."""
    model_name, data_name, _, overrides = parse_case(case)
    template, batches, train = build_with_loader(model_name, data_name, steps, overrides)
    bf16 = precision == "bf16"
    eager, compiled = Side(template, bf16, False), Side(template, bf16, True)
    eager_first = eager.round(batches)
    compiled_first = compiled.round(batches)
    eager_rounds, compiled_rounds = abba(rounds, lambda: eager.round(batches), lambda: compiled.round(batches))
    out = {"case": case, "precision": precision, "steps": len(batches), "batches_per_epoch": len(train),
           "eager_first_s": eager_first, "compiled_first_s": compiled_first,
           "eager_rounds_s": eager_rounds, "compiled_rounds_s": compiled_rounds}
    if in_process:
        # a second model compiled in the same process (a sweep's next job under Hydra's basic launcher)
        again = Side(template, bf16, True)
        out["in_process_first_s"] = again.round(batches)
        out["in_process_next_s"] = again.round(batches)
    return out


def excess(first: float, rounds: list[float]) -> float:
    """What a first round cost beyond a steady one (the median of `rounds`)."""
    return first - statistics.median(rounds)


def break_even(compile_s: float, gain_per_epoch_s: float) -> float:
    """Epochs after which compiling has paid for itself: compile time / per-epoch gain; inf when compiled
    steps are not faster."""
    if gain_per_epoch_s <= 0:
        return math.inf
    return max(compile_s, 0.0) / gain_per_epoch_s


def summarize(cold: dict, warm: dict) -> dict:
    """The table's row from a cold and a warm child of one (case, precision)."""
    steps = cold["steps"]
    eager_step = statistics.median(cold["eager_rounds_s"]) / steps
    compiled_step = statistics.median(cold["compiled_rounds_s"]) / steps
    ratios = [c / e for c, e in zip(cold["compiled_rounds_s"], cold["eager_rounds_s"])]
    q1, ratio, q3 = quartiles(ratios)
    eager_excess = excess(cold["eager_first_s"], cold["eager_rounds_s"])
    compile_cold = excess(cold["compiled_first_s"], cold["compiled_rounds_s"]) - eager_excess
    compile_warm = (excess(warm["compiled_first_s"], warm["compiled_rounds_s"])
                    - excess(warm["eager_first_s"], warm["eager_rounds_s"]))
    gain = cold["batches_per_epoch"] * (eager_step - compiled_step)
    row = {"case": cold["case"], "precision": cold["precision"], "eager_ms": eager_step * 1e3,
           "compiled_ms": compiled_step * 1e3, "ratio": ratio, "ratio_q1": q1, "ratio_q3": q3,
           "compile_cold_s": compile_cold, "compile_warm_s": compile_warm,
           "batches_per_epoch": cold["batches_per_epoch"], "gain_per_epoch_s": gain,
           "break_even_cold": break_even(compile_cold, gain), "break_even_warm": break_even(compile_warm, gain)}
    if "in_process_first_s" in cold:
        row["compile_in_process_s"] = cold["in_process_first_s"] - cold["in_process_next_s"]
    return row


def run_child(case: str, precision: str, rounds: int, steps: int, cache: str, in_process: bool) -> dict:
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache)
    cmd = [sys.executable, __file__, "--child", case, "--precision", precision, "--rounds", str(rounds),
           "--steps", str(steps)] + (["--in-process"] if in_process else [])
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"child {case} {precision} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def fmt_epochs(epochs: float) -> str:
    return "never" if math.isinf(epochs) else f"{epochs:.1f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6, help="ABBA rounds per side in the cold process")
    parser.add_argument("--warm-rounds", type=int, default=2, help="rounds per side in the warm process")
    parser.add_argument("--steps", type=int, default=5, help="training batches per round")
    parser.add_argument("--case", action="append", metavar="MODEL:DATA:BATCH[:SIZE]",
                        help="measure these cases instead of the default ones")
    parser.add_argument("--precision", action="append", choices=PRECISIONS,
                        help="measure these precisions (default: both)")
    parser.add_argument("--json", metavar="PATH", help="also write the rows, threads and load averages here")
    parser.add_argument("--child", metavar="CASE", help=argparse.SUPPRESS)
    parser.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.precision[0], args.rounds, args.steps, args.in_process)))
        return
    if args.rounds < 2 or args.warm_rounds < 1:
        parser.error("--rounds must be at least 2 (paired rounds with quartiles), --warm-rounds at least 1")
    meta = {"threads": torch.get_num_threads(), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "loadavg_start": loadavg(),
            "rounds": args.rounds, "warm_rounds": args.warm_rounds, "steps": args.steps}
    print(f"threads {meta['threads']}  rounds {args.rounds} (warm {args.warm_rounds}) x {args.steps} steps  "
          f"torch {meta['torch']}  load {meta['loadavg_start']}", flush=True)
    print("| model | data | batch | precision | eager ms/step | compiled ms/step | ratio compiled/eager (quartiles) "
          "| compile s cold / warm / in-process | gain s/epoch | break-even epochs cold / warm |")
    print("|---|---|---|---|---|---|---|---|---|---|", flush=True)
    rows = []
    for case in args.case or CASES:
        model_name, data_name, batch, overrides = parse_case(case)
        for precision in args.precision or PRECISIONS:
            with tempfile.TemporaryDirectory(prefix="inductor-") as cache:
                cold = run_child(case, precision, args.rounds, args.steps, cache, in_process=True)
                warm = run_child(case, precision, args.warm_rounds, args.steps, cache, in_process=False)
            row = summarize(cold, warm)
            row.update(cold=cold, warm=warm, loadavg=loadavg())
            rows.append(row)
            size = f" ({overrides[1].split('=')[1]})" if len(overrides) > 1 else ""
            print(f"| {model_name} | {data_name}{size} | {batch} | {precision} | {row['eager_ms']:,.0f} | "
                  f"{row['compiled_ms']:,.0f} | **{row['ratio']:.3f}** ({row['ratio_q1']:.3f}-{row['ratio_q3']:.3f}) "
                  f"| {row['compile_cold_s']:.0f} / {row['compile_warm_s']:.0f} / "
                  f"{row.get('compile_in_process_s', float('nan')):.0f} | {row['gain_per_epoch_s']:.1f} | "
                  f"{fmt_epochs(row['break_even_cold'])} / {fmt_epochs(row['break_even_warm'])} |", flush=True)
            if args.json:  # written after each row, so a long run's finished rows survive an interruption
                meta["loadavg_end"] = loadavg()
                Path(args.json).write_text(json.dumps({**meta, "rows": rows}, indent=1, default=str))


if __name__ == "__main__":
    main()
