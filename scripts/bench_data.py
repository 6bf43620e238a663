"""Data path throughput: cnnlab's device-resident fast path against per-sample torchvision v2 transforms in a
DataLoader, in one process.

Two measurements, each at 32x32x3 (the generated shapes set) and 28x28x1 (the bundled MNIST digits):
1. images/s of crop(padding)+flip+normalise batches. The baseline is the pipeline a user writes by hand:
   v2.Compose([RandomCrop, RandomHorizontalFlip, ToDtype(scale), Normalize]) applied per sample in a
   Dataset, batched by a DataLoader with one worker per core (persistent, so spawning is not timed).
   The fast path is cnnlab's TensorLoader with the same transforms as batched tensor ops.
2. One training epoch of LeNet-5 (28x28x1) or the convnet entry (32x32x3) fed by each of cnnlab's two
   loader paths, as `data.loader=tensor` vs `data.loader=dataloader` (same workers) give them.
Rounds alternate the two sides (ABBA) so drift in machine speed hits both; results are ratios of medians.

    python scripts/bench_data.py                  # 5 rounds
    python scripts/bench_data.py --rounds 7 --workers 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from _bench import PerSample, abba, images_per_s  # noqa: E402  (scripts/_bench.py, beside this script)
from cnnlab.config.typed import data_section

SETS = {  # name -> config overrides building it, and the model for the epoch measurement
    "32x32x3": (["data=shapes", "data.num_samples=10000", "augment=basic"], "convnet"),
    "28x28x1": (["data=mnist_sample", "augment=basic"], "lenet5"),
}


def build(overrides, workers, loader="tensor"):
    from cnnlab.config.compose import compose_config
    from cnnlab.data import build_data

    cfg = compose_config([*overrides, f"data.loader={loader}", f"data.num_workers={workers}", "data.batch_size=128"],
                         tempfile.mkdtemp())
    return cfg, build_data(data_section(cfg.data), 0, torch.device("cpu"), cfg.augment)


def baseline_loader(cfg, data, workers):
    from torchvision.transforms import v2

    info, pad = data.info, int(cfg.augment.transforms[0].padding)
    transform = v2.Compose([v2.RandomCrop(list(info.input_size), padding=pad), v2.RandomHorizontalFlip(),
                            v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(info.mean), list(info.std))])
    train = data.train  # the same training images cnnlab's loader holds
    return torch.utils.data.DataLoader(PerSample(train.images, train.labels, transform), batch_size=128, shuffle=True,
                                       num_workers=workers, persistent_workers=workers > 0)


def epoch_seconds(cfg, loader, model_name):
    from cnnlab.config.compose import compose_config
    from cnnlab.models import build_model

    mcfg = compose_config([f"model={model_name}"], tempfile.mkdtemp()).model
    info = loader_info = cfg.data
    torch.manual_seed(0)
    model = build_model(mcfg, int(info.in_channels), int(info.num_classes), tuple(loader_info.input_size))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    start = time.perf_counter()
    for x, y in loader:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per measurement (>= 2)")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="DataLoader workers (default: cores)")
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be at least 2")
    print(f"torch {torch.__version__}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, "
          f"{args.workers} DataLoader workers, {args.rounds} rounds")
    rows = []
    for name, (overrides, model_name) in SETS.items():
        cfg, fast = build(overrides, args.workers)
        _, slow = build(overrides, args.workers, loader="dataloader")
        baseline = baseline_loader(cfg, fast, args.workers)
        images_per_s(baseline), images_per_s(fast.train), images_per_s(slow.train)  # warm-up: workers, caches
        fast_ips, base_ips = abba(args.rounds, lambda: images_per_s(fast.train), lambda: images_per_s(baseline))
        fast_ep, slow_ep = abba(args.rounds, lambda: epoch_seconds(cfg, fast.train, model_name),
                                lambda: epoch_seconds(cfg, slow.train, model_name))
        f_ips, b_ips = statistics.median(fast_ips), statistics.median(base_ips)
        f_ep, s_ep = statistics.median(fast_ep), statistics.median(slow_ep)
        rows.append((name, f_ips, b_ips, f_ep, s_ep, model_name, fast.sizes["train"]))
        print(f"{name}: crop+flip+normalise  fast path {f_ips:,.0f} img/s, per-sample DataLoader {b_ips:,.0f} img/s"
              f"  -> {f_ips / b_ips:.1f}x  (quartiles fast {_spread(fast_ips)}, DataLoader {_spread(base_ips)})")
        print(f"{name}: one {model_name} epoch ({fast.sizes['train']} images)  fast path {f_ep:.2f} s, DataLoader "
              f"path {s_ep:.2f} s  -> DataLoader/fast {s_ep / f_ep:.2f}")
    print("\n| data | fast path img/s | per-sample DataLoader img/s | ratio | epoch fast (s) | epoch DataLoader (s) | ratio |")
    print("|---|---|---|---|---|---|---|")
    for name, f_ips, b_ips, f_ep, s_ep, model_name, n in rows:
        print(f"| {name} ({model_name}, {n} train images) | {f_ips:,.0f} | {b_ips:,.0f} | {f_ips / b_ips:.1f}x "
              f"| {f_ep:.2f} | {s_ep:.2f} | {s_ep / f_ep:.2f}x |")


def _spread(values):
    q = statistics.quantiles(values, n=4) if len(values) >= 2 else [values[0]] * 3
    return f"{q[0]:,.0f}..{q[2]:,.0f}"


if __name__ == "__main__":
    main()
