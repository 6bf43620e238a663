"""NHWC (channels_last) against NCHW on this machine's CPU, for the models trainer.channels_last=auto decides on.

For each (model, data) pair at the data set's default training batch size, one process trains the same model
(same initial weights, same batches) with a hand-written loop -- forward, cross-entropy, backward, AdamW step --
once in the default NCHW layout and once with the model and every input batch in channels_last, alternating
the two sides (ABBA) round by round. Reported: training images per second, and the median of the paired
ratios NHWC/NCHW with quartiles. The rule in cnnlab.engine.devices.channels_last_helps comes from these numbers.

    python scripts/bench_channels_last.py [--rounds 8] [--steps 20] [--case resnet20:shapes ...]
    python scripts/bench_channels_last.py --engine      # the same through Trainer.fit (epoch throughput)
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from cnnlab.config.typed import data_section

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

CASES = (("lenet5", "mnist_sample"), ("resnet20", "shapes"), ("convnet", "shapes"))


def build(model_name: str, data_name: str, steps: int, overrides=()):
    """The model, `steps` training batches (normalised, augmented as the default run does) and the batch size."""
    model, batches, train = build_with_loader(model_name, data_name, steps, overrides)
    return model, batches, train.batch_size


def build_with_loader(model_name: str, data_name: str, steps: int, overrides=()):
    """build's model and batches, and the training loader they come from (its len: batches per epoch);
    `overrides`: further config overrides, e.g. data.input_size=[64,64]."""
    from cnnlab.config.compose import compose_config
    from cnnlab.data import build_data
    from cnnlab.models import build_model

    cfg = compose_config([f"model={model_name}", f"data={data_name}", *overrides], tempfile.mkdtemp())
    data = build_data(data_section(cfg.data), int(cfg.seed), torch.device("cpu"), cfg.augment)
    info = data.info
    torch.manual_seed(0)
    model = build_model(cfg.model, info.in_channels, info.num_classes, info.input_size)
    data.train.set_epoch(1)
    batches = []
    for x, y in data.train:
        batches.append((x.clone(), y.clone()))
        if len(batches) == steps:
            break
    return model, batches, data.train


def train_round(template, batches, nhwc: bool) -> float:
    """img/s of one pass over `batches` with a fresh copy of the model (so both sides start equal)."""
    model = copy.deepcopy(template)
    if nhwc:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    images = 0
    start = time.perf_counter()
    for x, y in batches:
        if nhwc:
            x = x.contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        images += len(y)
    return images / (time.perf_counter() - start)


def engine_round(model_name: str, data_name: str, steps: int, layout: str) -> float:
    """Training img/s of one epoch of `steps` batches through cnnlab's Trainer with trainer.channels_last=layout
    (the model and, in the trainer, every input batch converted)."""
    from cnnlab.config.compose import compose_config
    from cnnlab.run.lifecycle import prepare

    cfg = compose_config([f"model={model_name}", f"data={data_name}", f"trainer.channels_last={layout}",
                          "trainer.max_epochs=1", f"trainer.limit_train_batches={steps}", "trainer.progress=none",
                          "trainer.summary=none", "logger=none", "trainer.checkpoint.save_last=false",
                          "trainer.checkpoint.save_best=false", "trainer.test_with=last"],
                         Path(tempfile.mkdtemp()) / "run")
    run = prepare(cfg, overrides=[])
    run.trainer.fit(run.data.train, run.data.val)
    run.trainer.teardown()
    return run.trainer.history[-1]["throughput/img_s"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20, help="training batches per round")
    parser.add_argument("--engine", action="store_true",
                        help="through cnnlab's Trainer (trainer.channels_last=true vs false) instead of a hand loop")
    parser.add_argument("--case", action="append", metavar="MODEL:DATA",
                        help="measure these pairs instead of the default three")
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be at least 2: the result is a median of paired rounds with quartiles")
    print(f"threads {torch.get_num_threads()}  rounds {args.rounds} x {args.steps} steps  torch {torch.__version__}")
    print("| model | data | batch | NHWC img/s | NCHW img/s | ratio NHWC/NCHW (quartiles) |")
    print("|---|---|---|---|---|---|")
    cases = [tuple(case.split(":", 1)) for case in args.case] if args.case else CASES
    for model_name, data_name in cases:
        if args.engine:
            batch_size = "default"

            def side(nhwc: bool) -> float:
                return engine_round(model_name, data_name, args.steps, "true" if nhwc else "false")
        else:
            model, batches, batch_size = build(model_name, data_name, args.steps)

            def side(nhwc: bool) -> float:
                return train_round(model, batches, nhwc)
        side(True)  # warm-up: first-use costs of both layouts
        side(False)
        pairs = []
        for r in range(args.rounds):
            if r % 2 == 0:  # ABBA: drift in machine speed hits both sides alike
                a, b = side(True), side(False)
            else:
                b = side(False)
                a = side(True)
            pairs.append((a, b))
            print(f"  {model_name} round {r + 1}: NHWC {a:7.0f}  NCHW {b:7.0f}  ratio {a / b:.3f}", file=sys.stderr)
        ratios = [a / b for a, b in pairs]
        q = statistics.quantiles(ratios, n=4)
        print(f"| {model_name} | {data_name} | {batch_size} | {statistics.median(a for a, _ in pairs):,.0f} | "
              f"{statistics.median(b for _, b in pairs):,.0f} | **{statistics.median(ratios):.3f}** "
              f"({q[0]:.3f}-{q[2]:.3f}) |", flush=True)


if __name__ == "__main__":
    main()
