"""bf16 autocast against fp32 on this machine's CPU (or a GPU): training speed per model of the zoo's small models.

For each (model, data) pair at the data set's default training batch size, one process trains the same model
(same initial weights, same batches, channels_last as trainer.channels_last=auto sets it on CPU) with a
hand-written loop -- forward under torch.autocast("cpu", torch.bfloat16) or in fp32, cross-entropy in fp32,
backward, AdamW step on fp32 weights -- alternating the two sides (ABBA) round by round. Reported: training
images per second and the median of the paired ratios bf16/fp32 with quartiles, and the model's multiply-
accumulates per sample (what makes a model compute-bound enough to gain). Also says whether the CPU computes
bf16 natively (AMX, AVX-512 BF16 or Arm BF16 in /proc/cpuinfo's flags; a GPU's compute capability >= 8.0):
without it, bf16 is emulated and slower. The last column is what `trainer.precision=auto` picks for the row
(cnnlab.engine.devices.precision_choice, fed the same MACs), so the table shows the rule beside the speeds.

    python scripts/bench_precision.py [--rounds 6] [--steps 15] [--case resnet20:shapes ...] [--device cuda]

On CUDA the batches live on the GPU, each round ends with a synchronisation, and TF32 stays as torch has it
(off for matmuls), so fp32 is plain fp32.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import abba, quartiles  # noqa: E402  (scripts/: ABBA rounds shared by the benchmarks)
from bench_channels_last import build  # noqa: E402  (the same model and batches)

from cnnlab.engine.devices import native_bf16, precision_choice  # noqa: E402  (what trainer.precision=auto reads)

CASES = (("lenet5", "mnist_sample"), ("convnet", "shapes"), ("alexnet_small", "shapes"), ("resnet20", "shapes"),
         ("vgg11_bn", "shapes"), ("densenet_bc100", "shapes"))


def macs_per_sample(model, batches) -> int:
    from cnnlab.models.inspector.summarize import summarize

    x = batches[0][0][:1]
    return int(summarize(copy.deepcopy(model), tuple(x.shape[1:])).macs)


def train_round(template, batches, bf16: bool) -> float:
    """img/s of one pass over `batches` with a fresh copy of the model (so both sides start equal), on the
    batches' device."""
    device = batches[0][0].device
    model = copy.deepcopy(template).to(device, memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    images = 0
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for x, y in batches:
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        images += len(y)
    sync()
    return images / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=15, help="training batches per round")
    parser.add_argument("--case", action="append", metavar="MODEL:DATA",
                        help="measure these pairs instead of the default ones")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be at least 2: the result is a median of paired rounds with quartiles")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    native, where = native_bf16(device)
    print(f"device {device}  threads {torch.get_num_threads()}  rounds {args.rounds} x {args.steps} steps  "
          f"torch {torch.__version__}  native bf16: {'yes' if native else 'no'} ({where})")
    print("| model | data | batch | MACs per sample | bf16 img/s | fp32 img/s | ratio bf16/fp32 (quartiles) | auto picks |")
    print("|---|---|---|---|---|---|---|---|")
    cases = [tuple(case.split(":", 1)) for case in args.case] if args.case else CASES
    for model_name, data_name in cases:
        model, batches, batch_size = build(model_name, data_name, args.steps)
        macs = macs_per_sample(model, batches)
        batches = [(x.to(device), y.to(device)) for x, y in batches]
        auto = precision_choice("auto", native=native, where=where, macs=macs)[0].name
        train_round(model, batches, True)  # warm-up: first-use costs of both sides
        train_round(model, batches, False)
        bf16, fp32 = abba(args.rounds, lambda: train_round(model, batches, True),
                          lambda: train_round(model, batches, False))
        ratios = [a / b for a, b in zip(bf16, fp32)]
        print(f"  {model_name}: ratios " + " ".join(f"{r:.3f}" for r in ratios), file=sys.stderr)
        q1, median, q3 = quartiles(ratios)
        print(f"| {model_name} | {data_name} | {batch_size} | {macs / 1e6:,.1f} M | "
              f"{statistics.median(bf16):,.0f} | {statistics.median(fp32):,.0f} | "
              f"**{median:.3f}** ({q1:.3f}-{q3:.3f}) | {'bf16' if auto == 'bf16' else 'fp32'} |", flush=True)


if __name__ == "__main__":
    main()
