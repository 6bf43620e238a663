"""augment=imagenet throughput: cnnlab's fast path (batched RandomResizedCrop + flip + ColorJitter on the
device-resident set) against the per-sample DataLoader path running the same v2 pipeline, in one process.

Both loaders come from cnnlab's build_data on the same data (`data.loader=tensor` vs `data.loader=dataloader`,
the DataLoader with one persistent worker per core) and yield normalised batches of 128. One measurement is a
full pass over the training set; rounds alternate the two sides (ABBA) so drift in machine speed hits both,
and each round gives one paired ratio fast/DataLoader. Reported: median images/s per side and the median
ratio with its quartiles.

    python scripts/bench_augment.py                  # 5 rounds
    python scripts/bench_augment.py --rounds 7 --workers 2 --threads 1

--threads sets torch's threads for the fast path (the DataLoader workers run one each). On a machine other
processes also load, one thread can beat several: OpenMP threads wait for each other at every op.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from _bench import abba, images_per_s, loadavg, quartiles  # noqa: E402  (scripts/_bench.py, beside this script)
from cnnlab.config.typed import data_section

SETS = {  # name -> config overrides building it
    "32x32x3 shapes": ["data=shapes", "data.num_samples=10000"],
    "64x64x3 shapes": ["data=shapes", "data.num_samples=4000", "data.image_size=64", "data.input_size=[64,64]",
                       "data.mean=[0.5,0.5,0.5]", "data.std=[0.29,0.29,0.29]"],
}


def build(overrides, workers, loader):
    from cnnlab.config.compose import compose_config
    from cnnlab.data import build_data

    cfg = compose_config([*overrides, "augment=imagenet", f"data.loader={loader}", f"data.num_workers={workers}",
                          "data.batch_size=128"], tempfile.mkdtemp())
    data = build_data(data_section(cfg.data), 0, torch.device("cpu"), cfg.augment)
    assert data.loader_kind == loader, (loader, data.loader_kind)
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per data set (>= 2)")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="DataLoader workers (default: cores)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be at least 2")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, "
          f"{args.workers} DataLoader workers, {args.rounds} rounds, load average {loadavg()}")
    rows = []
    for name, overrides in SETS.items():
        fast = build(overrides, args.workers, "tensor")
        slow = build(overrides, args.workers, "dataloader")
        images_per_s(fast.train), images_per_s(slow.train)  # warm-up: workers, caches
        fast_ips, slow_ips = abba(args.rounds, lambda: images_per_s(fast.train), lambda: images_per_s(slow.train))
        ratios = [f / s for f, s in zip(fast_ips, slow_ips)]
        q1, med, q3 = quartiles(ratios)
        rows.append((name, fast.sizes["train"], statistics.median(fast_ips), statistics.median(slow_ips), q1, med, q3))
        print(f"{name}: fast path {statistics.median(fast_ips):,.0f} img/s, DataLoader path "
              f"{statistics.median(slow_ips):,.0f} img/s -> {med:.1f}x (quartiles {q1:.1f}-{q3:.1f})")
    print(f"\nload average after: {loadavg()}")
    print("\n| data (augment=imagenet) | fast path img/s | DataLoader path img/s | fast/DataLoader (quartiles) |")
    print("|---|---|---|---|")
    for name, n, f, s, q1, med, q3 in rows:
        print(f"| {name}, {n:,} training images | {f:,.0f} | {s:,.0f} | **{med:.1f}x** ({q1:.1f}-{q3:.1f}) |")


if __name__ == "__main__":
    main()
