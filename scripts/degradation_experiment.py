"""The degradation experiment of He et al. 2015 (section 4.2), small: plain nets get worse with depth,
residual nets do not.

Trains plain20, plain56, resnet20 and resnet56 with the same recipe (SGD 0.1, momentum 0.9, weight decay
1e-4, batch 128, cosine schedule, the same epochs and seed) and prints their final training loss and
accuracy and test accuracy. The paper's claim is about optimisation, so the training error is the number
to read: plain56 should end above plain20, resnet56 at or below resnet20.

    python scripts/degradation_experiment.py                     # MNIST sample, 4 epochs each (~10 min on 2 CPU cores)
    python scripts/degradation_experiment.py --epochs 10 data.class_subset=[0,1,2]
Extra arguments are config overrides applied to every run.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

MODELS = ("plain20", "plain56", "resnet20", "resnet56")
RECIPE = ["optimizer=sgd", "optimizer.lr=0.1", "optimizer.momentum=0.9", "optimizer.weight_decay=1e-4",
          "data.batch_size=128", "scheduler=cosine", "augment=none", "logger=none", "trainer.progress=none"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from cnnlab.config import compose_config
    from cnnlab.engine.checkpoint import load_checkpoint
    from cnnlab.training import train

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in MODELS:
            out = Path(tmp) / name
            cfg = compose_config([f"model={name}", f"trainer.max_epochs={args.epochs}", *RECIPE, *args.overrides],
                                 out)
            start = time.perf_counter()
            metrics = train(cfg, overrides=[])
            history = load_checkpoint(out / "checkpoints" / "last.ckpt")["history"]
            rows.append((name, history[-1]["train/loss"], history[-1]["train/acc"], metrics["test/acc"],
                         time.perf_counter() - start))
            print(f"{name}: done in {rows[-1][-1]:.0f}s", file=sys.stderr, flush=True)
    print(f"epochs {args.epochs}; recipe {' '.join(RECIPE)} {' '.join(args.overrides)}")
    print("| model | final train loss | final train acc | test acc | seconds |")
    print("|---|---|---|---|---|")
    for name, loss, acc, test_acc, seconds in rows:
        print(f"| {name} | {loss:.4f} | {acc:.4f} | {test_acc:.4f} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
