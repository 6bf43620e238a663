"""Engine overhead: cnnlab's Trainer.fit against a minimal hand-written PyTorch loop, in one process.

Both sides train the default run (LeNet-5 on the bundled MNIST digits) on identical data tensors, model,
batch size, optimizer (same parameter groups), schedule and augmentation, and both validate once per epoch.
The engine side additionally does what a user gets from cnnlab: console progress, TensorBoard scalars,
checkpoints every epoch, early-stopping bookkeeping. Rounds alternate engine/hand so drift in machine
speed hits both; the ratio of medians is the result.

    python scripts/benchmark.py                      # default: 5 rounds of 3 epochs
    python scripts/benchmark.py --rounds 7 --epochs 5 trainer.progress=plain
Extra arguments are config overrides applied to the engine side (and mirrored where they matter).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def engine_round(overrides, epochs, tmp):
    from cnnlab.config.compose import compose_config
    from cnnlab.run.lifecycle import prepare

    cfg = compose_config([f"trainer.max_epochs={epochs}", "trainer.early_stopping.enabled=false", *overrides],
                  tempfile.mkdtemp(dir=tmp))
    run = prepare(cfg, overrides=[])
    start, cpu = time.perf_counter(), time.process_time()
    run.trainer.fit(run.data.train, run.data.val)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    run.trainer.teardown()  # event file, checkpoint writer thread
    images = run.data.train.dataset_size * epochs
    return images / seconds, images / cpu, run


def split_images(loader):
    """A split's own images: the device-resident loaders share one array and index their rows of it."""
    return loader.images if loader.index is None else loader.images[loader.index]


def hand_round(template, epochs):
    """The loop a user would write by hand, fed the exact tensors and modules cnnlab built."""
    from cnnlab.models import build_model
    from cnnlab.engine.optim import build_optimizer, build_schedule

    cfg, data = template.cfg, template.data
    info = data.info
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, info.in_channels, info.num_classes, info.input_size)
    nhwc = template.trainer.options.channels_last  # the layout trainer.channels_last chose for the engine side
    layout = torch.channels_last if nhwc else torch.contiguous_format
    model = model.to(memory_format=layout)
    opt = build_optimizer(cfg.optimizer, model)
    sched = build_schedule(cfg.scheduler, opt, max_epochs=epochs, steps_per_epoch=len(data.train),
                           monitor_mode="min").scheduler
    x_all, y_all = split_images(data.train), data.train.labels
    x_val = data.val.normalize(split_images(data.val).float()).contiguous(memory_format=layout)
    y_val = data.val.labels
    scale, shift = data.train.normalize.scale, data.train.normalize.shift
    augment, bs, n = data.train.augment, data.train.batch_size, len(y_all)
    gen = torch.Generator().manual_seed(0)
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(epochs):
        model.train()
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, bs):
            idx = order[i:i + bs]
            x = x_all[idx].float()
            if augment is not None:
                x = augment(x, gen)
            x = x * scale + shift
            if nhwc:
                x = x.contiguous(memory_format=layout)
            loss = F.cross_entropy(model(x), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
        model.eval()
        with torch.inference_mode():
            F.cross_entropy(model(x_val), y_val).item()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return n * epochs / seconds, n * epochs / cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="config overrides for the engine side")
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be at least 2: the result is a median of paired rounds with quartiles")
    overrides = ["trainer.progress=bar", "logger.histogram_every_n_epochs=0", "logger.images=false",
                 *args.overrides]
    import logging

    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        # Warm-up: first-use costs (lazy imports, allocator growth) are not engine overhead.
        _, _, template = engine_round(overrides, 1, tmp)
        hand_round(template, 1)
        wall, cpu = [], []  # per round: (engine img/s, hand img/s)
        for r in range(args.rounds):
            # ABBA order within each pair of rounds, so a machine slowing down or speeding up
            # mid-round does not favour either side.
            if r % 2 == 0:
                e_wall, e_cpu, _ = engine_round(overrides, args.epochs, tmp)
                h_wall, h_cpu = hand_round(template, args.epochs)
            else:
                h_wall, h_cpu = hand_round(template, args.epochs)
                e_wall, e_cpu, _ = engine_round(overrides, args.epochs, tmp)
            wall.append((e_wall, h_wall))
            cpu.append((e_cpu, h_cpu))
            print(f"round {r + 1}: engine {e_wall:7.0f} img/s  hand {h_wall:7.0f} img/s  wall ratio {e_wall / h_wall:.3f}"
                  f"  cpu-time ratio {e_cpu / h_cpu:.3f}", file=sys.stderr)
    print(f"threads {torch.get_num_threads()}  rounds {args.rounds} x {args.epochs} epochs  "
          f"overrides {' '.join(overrides)}")
    for name, pairs in (("wall-clock", wall), ("process CPU time", cpu)):
        ratios = [e / h for e, h in pairs]
        q = statistics.quantiles(ratios, n=4)
        print(f"{name:>16}: engine {statistics.median(e for e, _ in pairs):7.0f} img/s  "
              f"hand {statistics.median(h for _, h in pairs):7.0f} img/s  "
              f"ratio {statistics.median(ratios):.3f} (median of paired rounds, quartiles {q[0]:.3f}-{q[2]:.3f})")


if __name__ == "__main__":
    main()
