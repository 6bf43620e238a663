"""GPU readiness: training throughput of the fastest public CIFAR-10 workloads on synthetic CIFAR-shaped data.

The workload of the CIFAR-10 speed records (David Page's "How to train your ResNet", Keller Jordan's airbench):
3x32x32 images, 10 classes, batch 512, a small ResNet. Here: cnnlab's zoo `resnet18` (torchvision's layout,
stem adapted to small images) and `resnet20` (the CIFAR ResNet), built by cnnlab's model builder, trained on
random uint8 images (50,000 by default) with the crop(padding 4) + flip augmentation of configs/augment/basic.yaml.

For every model x precision (fp32, fp16 autocast + GradScaler, bf16 autocast) x layout (NCHW, channels_last),
the same training step (forward, cross-entropy, backward, SGD-Nesterov step) is fed by two loaders:
- tensor: cnnlab's device-resident fast path (cnnlab.data.loaders.TensorLoader with BatchAugment);
- dataloader: the hand-written baseline, a torch DataLoader over the uint8 tensors with per-sample torchvision
  v2 transforms (crop, flip, ToDtype, Normalize), pinned memory and non-blocking copies on CUDA.
Reported: median ms/step and img/s over --steps steps after --warmup steps, and the ratio tensor/dataloader
(the baseline runs in the same process, right before or after the fast path, in alternating order).
A precision the device cannot run is reported as n/a with the reason. On CUDA: cuDNN autotuner and TF32 on,
per-step times from CUDA events (no synchronisation inside the timed loop).

    python scripts/bench_gpu.py                                  # full settings, --device auto
    python scripts/bench_gpu.py --compile --json bench.json      # torch.compile of the model as well
    python scripts/bench_gpu.py --tiny --device cpu              # a few seconds on a CPU
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from _bench import PerSample  # noqa: E402  (scripts/_bench.py, beside this script)

DEFAULTS = dict(models="resnet18,resnet20", batch_size=512, n_train=50_000, steps=50, warmup=5,
                precisions="fp32,fp16,bf16", channels_last="both", image_size=32, num_classes=10)
TINY = dict(models="resnet20", batch_size=16, n_train=64, steps=2, warmup=1, workers=0)
AUTOCAST = {"fp16": torch.float16, "bf16": torch.bfloat16}
LOADERS = ("tensor", "dataloader")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--models", help=f"comma-separated zoo names (default {DEFAULTS['models']})")
    parser.add_argument("--batch-size", type=int, help=f"default {DEFAULTS['batch_size']}")
    parser.add_argument("--n-train", type=int, help=f"synthetic training images (default {DEFAULTS['n_train']})")
    parser.add_argument("--image-size", type=int, help=f"square image side (default {DEFAULTS['image_size']})")
    parser.add_argument("--num-classes", type=int, help=f"default {DEFAULTS['num_classes']}")
    parser.add_argument("--steps", type=int, help=f"timed steps per row (default {DEFAULTS['steps']})")
    parser.add_argument("--warmup", type=int, help=f"untimed steps before them (default {DEFAULTS['warmup']})")
    parser.add_argument("--precisions", help=f"comma-separated, of fp32,fp16,bf16 (default {DEFAULTS['precisions']})")
    parser.add_argument("--channels-last", choices=("both", "on", "off"), help="memory layout(s) (default both)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (compiled in the warm-up)")
    parser.add_argument("--workers", type=int,
                        help="DataLoader workers (default: min(8, cores) on CUDA, 0 on CPU where they would take "
                             "the training threads' cores)")
    parser.add_argument("--tiny", action="store_true",
                        help="preset for a few seconds on CPU: " + ", ".join(f"{k}={v}" for k, v in TINY.items()))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write settings, environment and rows here")
    args = parser.parse_args(argv)
    preset = {**DEFAULTS, **(TINY if args.tiny else {})}
    for key, value in preset.items():  # explicit options win over the preset
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    bad = [p for p in args.precisions if p not in ("fp32", *AUTOCAST)]
    if bad:
        parser.error(f"--precisions: unknown {', '.join(bad)}; choose from fp32, fp16, bf16")
    if min(args.batch_size, args.n_train, args.steps) < 1 or args.warmup < 0:
        parser.error("--batch-size, --n-train and --steps must be positive, --warmup not negative")
    if args.n_train < args.batch_size:
        parser.error("--n-train must hold at least one batch (--batch-size)")
    return args


# ---- device ----
def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device cuda but CUDA is not available (torch {torch.__version__}); use --device cpu")
    device = torch.device(name)
    if device.type == "cuda":
        # The settings a GPU run wants: autotuned cuDNN kernels for the fixed input shape, TF32 tensor cores.
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.set_float32_matmul_precision("high")
    return device


def environment(device: torch.device) -> dict:
    env = {"torch": torch.__version__, "device": str(device), "threads": torch.get_num_threads(),
           "cores": os.cpu_count()}
    if Path("/proc/loadavg").exists():  # other jobs on the same cores change CPU numbers a lot
        env["loadavg_at_start"] = Path("/proc/loadavg").read_text().split()[:3]
    if device.type == "cuda":
        env.update(gpu=torch.cuda.get_device_name(device), capability=list(torch.cuda.get_device_capability(device)),
                   cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return env


def reason(bad: Exception) -> str:
    return f"{type(bad).__name__}: {(str(bad).splitlines() or [''])[0]}"


def precision_problem(precision: str, device: torch.device) -> str | None:
    """Why `precision` cannot train on `device`, or None: one autocast step of a conv net, as the benchmark does."""
    if precision == "fp32":
        return None
    dtype = AUTOCAST[precision]
    native_bf16 = device.type != "cuda" or torch.cuda.is_bf16_supported(including_emulation=False)
    if dtype == torch.bfloat16 and not native_bf16:
        return "this GPU has no native bfloat16 (compute capability < 8.0)"
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 2)).to(device)
    x = torch.randn(2, 3, 8, 8, device=device)
    try:
        scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
        with torch.autocast(device.type, dtype=dtype):
            out = net(x)
        if out.dtype != dtype:
            return f"autocast on {device.type} left the layers in {out.dtype}"
        loss = out.float().square().mean()
        (scaler.scale(loss) if scaler else loss).backward()
    except Exception as bad:  # whatever torch says is the reason
        return reason(bad)
    return None


def precision_note(precision: str, device: torch.device) -> str:
    if precision == "fp16" and device.type == "cpu":
        return "torch's CPU autocast; cnnlab's trainer refuses trainer.precision=fp16 on CPU"
    return ""


# ---- data and models ----
def synthetic_data(n: int, size: int, classes: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator)
    return images, torch.randint(0, classes, (n,), generator=generator)


def compose(model_name: str, size: int, classes: int):
    """The run config cnnlab would compose for this model on CIFAR-10-shaped data with the basic augmentation."""
    from cnnlab.config.compose import compose_config

    return compose_config([f"model={model_name}", "data=cifar10", "augment=basic", f"data.input_size=[{size},{size}]",
                           f"data.num_classes={classes}"], tempfile.mkdtemp())


def build_model(cfg, seed: int) -> torch.nn.Module:
    from cnnlab.models import build_model as zoo_build

    torch.manual_seed(seed)  # every row starts from the same weights
    data = cfg.data
    return zoo_build(cfg.model, int(data.in_channels), int(data.num_classes), tuple(data.input_size))


def transforms_of(cfg) -> list:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg.augment.transforms, resolve=True)


def tensor_loader(cfg, images, labels, batch_size: int, device, seed: int):
    """cnnlab's fast path: the uint8 set on the device, shuffled by index, augmented and normalised per batch."""
    from cnnlab.data.augment import BatchAugment
    from cnnlab.data.loaders import TensorLoader

    return TensorLoader(images, labels, batch_size, mean=list(cfg.data.mean), std=list(cfg.data.std), shuffle=True,
                        augment=BatchAugment(transforms_of(cfg)), seed=seed, drop_last=True, device=device)


def baseline_loader(cfg, images, labels, batch_size: int, device, workers: int):
    """What a user writes by hand: the same crop + flip as configs/augment/basic.yaml, then scale and normalise."""
    from torchvision.transforms import v2

    crop, flip = transforms_of(cfg)
    transform = v2.Compose([v2.RandomCrop(crop["size"], padding=crop["padding"]), v2.RandomHorizontalFlip(flip["p"]),
                            v2.ToDtype(torch.float32, scale=True),
                            v2.Normalize(list(cfg.data.mean), list(cfg.data.std))])
    return torch.utils.data.DataLoader(PerSample(images, labels, transform), batch_size=batch_size, shuffle=True,
                                       drop_last=True, num_workers=workers, persistent_workers=workers > 0,
                                       pin_memory=device.type == "cuda")


def batches(loader, device):
    """Endless (x, y) on the device, epoch after epoch."""
    epoch = 0
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        for x, y in loader:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)  # no-op for the fast path
        epoch += 1


# ---- the training step and its timing ----
def make_step(model, precision: str, device: torch.device, nhwc: bool):
    """One training step, the same for both loaders."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    dtype = AUTOCAST.get(precision)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    def step(x, y):
        if nhwc:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        return loss

    return step


class Clock:
    """Step boundaries: CUDA events on a GPU (the stream's own timeline, no sync per step), perf_counter on CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def mark(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def intervals(self, marks) -> list[float]:
        """Seconds between consecutive marks (call after sync)."""
        if self.cuda:
            return [a.elapsed_time(b) / 1000 for a, b in zip(marks, marks[1:])]
        return [b - a for a, b in zip(marks, marks[1:])]


def measure(step, feed, steps: int, warmup: int, batch_size: int, clock: Clock) -> dict:
    for _ in range(warmup):  # cuDNN autotuning, compilation, allocator growth, worker start-up
        step(*next(feed))
    clock.sync()
    marks = [clock.mark()]
    for _ in range(steps):
        loss = step(*next(feed))  # the batch is fetched inside the interval: loader cost is part of a step
        marks.append(clock.mark())
    clock.sync()
    times = clock.intervals(marks)
    return {"img_s": steps * batch_size / sum(times), "ms_per_step": 1000 * statistics.median(times),
            "final_loss": float(loss.detach().float())}


def run_config(cfg, data, args, device, precision: str, nhwc: bool, flip_order: bool) -> list[dict]:
    """Both loaders on one model (built, laid out, compiled once): rows for tensor and dataloader."""
    model = build_model(cfg, args.seed).to(device)
    if nhwc:
        model = model.to(memory_format=torch.channels_last)
    if args.compile:
        torch._dynamo.reset()  # a fresh compile per configuration, not a recompile-limit fallback to eager
        model = torch.compile(model)
    step = make_step(model, precision, device, nhwc)
    images, labels = data
    loaders = {"tensor": lambda: tensor_loader(cfg, images, labels, args.batch_size, device, args.seed),
               "dataloader": lambda: baseline_loader(cfg, images, labels, args.batch_size, device, args.workers)}
    rows = {}
    for kind in (reversed(LOADERS) if flip_order else LOADERS):  # alternate who goes first: drift hits both
        feed = batches(loaders[kind](), device)
        try:
            rows[kind] = measure(step, feed, args.steps, args.warmup, args.batch_size, Clock(device))
        except Exception as bad:  # out of memory, a compiler failure: report it, go on with the next row
            rows[kind] = {"status": "failed", "reason": reason(bad)}
        finally:
            feed.close()  # drops the loader, so persistent DataLoader workers exit before the next row
    return [rows[kind] | {"loader": kind} for kind in LOADERS]


def run_all(args, device) -> list[dict]:
    data = synthetic_data(args.n_train, args.image_size, args.num_classes, args.seed)
    layouts = {"both": (False, True), "on": (True,), "off": (False,)}[args.channels_last]
    rows, n = [], 0
    for model_name in args.models:
        cfg = compose(model_name, args.image_size, args.num_classes)
        for precision in args.precisions:
            problem = precision_problem(precision, device)
            for nhwc in layouts:
                base = {"model": model_name, "precision": precision, "layout": "NHWC" if nhwc else "NCHW",
                        "compile": args.compile}
                if problem:
                    rows += [base | {"loader": kind, "status": "n/a", "reason": problem} for kind in LOADERS]
                    continue
                for row in run_config(cfg, data, args, device, precision, nhwc, flip_order=n % 2 == 1):
                    note = precision_note(precision, device)
                    rows.append(base | {"status": "ok"} | row | ({"note": note} if note else {}))
                n += 1
                print(f"  done {model_name} {precision} {base['layout']}", file=sys.stderr, flush=True)
    return rows


# ---- reporting ----
def ratios(rows: list[dict]) -> list[dict]:
    """tensor img/s / dataloader img/s for each configuration measured on both loaders."""
    pairs = {}
    for row in rows:
        if row.get("status") == "ok" and "img_s" in row:
            pairs.setdefault((row["model"], row["precision"], row["layout"]), {})[row["loader"]] = row["img_s"]
    return [{"model": m, "precision": p, "layout": lay, "tensor_img_s": v["tensor"],
             "dataloader_img_s": v["dataloader"], "ratio": v["tensor"] / v["dataloader"]}
            for (m, p, lay), v in pairs.items() if len(v) == 2]


def markdown(rows: list[dict], pairs: list[dict]) -> str:
    lines = ["| model | precision | layout | loader | img/s | ms/step (median) | note |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "img_s" in r:
            speed, ms, note = f"{r['img_s']:,.0f}", f"{r['ms_per_step']:.2f}", r.get("note", "")
        else:
            speed, ms, note = r["status"], r["status"], r["reason"]
        lines.append(f"| {r['model']} | {r['precision']} | {r['layout']} | {r['loader']} | {speed} | {ms} | {note} |")
    lines += ["", "| model | precision | layout | tensor img/s | DataLoader img/s | tensor/DataLoader |",
              "|---|---|---|---|---|---|"]
    for p in pairs:
        lines.append(f"| {p['model']} | {p['precision']} | {p['layout']} | {p['tensor_img_s']:,.0f} | "
                     f"{p['dataloader_img_s']:,.0f} | **{p['ratio']:.2f}x** |")
    for model in dict.fromkeys(p["model"] for p in pairs):
        values = [p["ratio"] for p in pairs if p["model"] == model]
        lines.append(f"\n{model}: tensor/DataLoader {statistics.median(values):.2f}x (median of {len(values)} "
                     f"configurations, {min(values):.2f}-{max(values):.2f})")
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = pick_device(args.device)
    if args.workers is None:
        args.workers = min(8, os.cpu_count() or 1) if device.type == "cuda" else 0
    settings = {k: getattr(args, k) for k in ("models", "batch_size", "n_train", "image_size", "num_classes", "steps",
                                              "warmup", "precisions", "channels_last", "compile", "workers", "seed")}
    env = environment(device)
    print(" ".join(f"{k}={v}" for k, v in {**env, **settings}.items()))
    rows = run_all(args, device)
    pairs = ratios(rows)
    print(markdown(rows, pairs))
    result = {"settings": settings, "environment": env, "rows": rows, "ratios": pairs}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, allow_nan=True))
    if not all(math.isfinite(r["img_s"]) for r in rows if "img_s" in r):
        raise SystemExit("non-finite img/s")
    return result


if __name__ == "__main__":
    main()
