"""A torchvision backbone's weights from the cache, offline: mobilenet_v2 on the bundled digits three ways.

ImageNet weights need the network once; this experiment makes its own source weights instead. It trains
`model=torchvision model.arch=mobilenet_v2` on a source data set (default: the bundled 5,000 MNIST digits,
data=mnist_sample; --source shapes for the generated RGB shapes), saves the best weights as a plain state
dict in torch.hub's cache dir ($TORCH_HOME/hub/checkpoints/, where torchvision's own files go), and then
learns scikit-learn's 1,797 8x8 digits (data=digits: another set of handwritten digits, shown at 28 px) with
`model.weights=<that file>`: (1) backbone frozen (only the new head trains), (2) fine-tuned (backbone at a
tenth of the head's learning rate), (3) from scratch. Every digits run gets the same epochs and seed. Each
step is a cnnlab-train command, printed before it runs; the table at the end is read from the runs'
metrics.json.

    python scripts/backbone_transfer.py                         # 3 epochs on mnist_sample, 4 on digits
    python scripts/backbone_transfer.py --source shapes --source-override data.num_samples=3000 --epochs-source 10
Extra arguments are config overrides applied to every digits run.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from transfer_experiment import print_table, three_ways  # scripts/, beside this script

REPO = Path(__file__).resolve().parents[1]
BACKBONE = ["model=torchvision", "model.arch=mobilenet_v2"]


def cnnlab_train(args: list[str]) -> dict:
    """Run `cnnlab-train args` (this checkout's code) and return its metrics.json."""
    print("cnnlab-train " + " ".join(shlex.quote(a) for a in args), flush=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH"))
                                                      if p))
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cnnlab.train", *args], check=True, env=env, cwd=REPO)
    out = next(a.split("=", 1)[1] for a in args if a.startswith("paths.output_dir="))
    metrics = json.loads((Path(out) / "metrics.json").read_text())
    metrics["seconds"] = time.perf_counter() - started
    return metrics


def export_weights(run_dir: Path, target: Path) -> None:
    """The run's best weights as a plain state dict (the form of torchvision's own weight files)."""
    import torch

    ckpt = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt["model"], target)
    print(f"saved {run_dir / 'checkpoints' / 'best.ckpt'} (epoch {ckpt['epoch']}) weights -> {target}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="mnist_sample", help="the source data option")
    parser.add_argument("--epochs-source", type=int, default=3, help="epochs on the source data")
    parser.add_argument("--source-override", action="append", default=[], help="a config override of the source run")
    parser.add_argument("--epochs", type=int, default=4, help="epochs of every digits run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs/backbone_transfer", help="where the run dirs go")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    import torch.hub  # where the weights file goes: $TORCH_HOME/hub/checkpoints (torch's default: ~/.cache/torch)

    out = Path(args.out).resolve()
    common = ["trainer.progress=plain", "logger=none", f"seed={args.seed}", "paths.existing_run=clear"]
    source = cnnlab_train([f"data={args.source}", *BACKBONE, f"trainer.max_epochs={args.epochs_source}", *common,
                           *args.source_override, f"paths.output_dir={out / 'source'}"])
    weights = Path(torch.hub.get_dir()) / "checkpoints" / f"mobilenet_v2-{args.source}-cnnlab.pth"
    export_weights(out / "source", weights)
    digits = ["data=digits", *BACKBONE, f"trainer.max_epochs={args.epochs}", *common, *args.overrides]
    rows = [(f"source: {args.source} {' '.join(args.source_override)}".rstrip() + ", from scratch", source)]
    def digits_run(extra: list[str], name: str) -> dict:
        return cnnlab_train([*digits, *extra, f"paths.output_dir={out / f'digits_{name}'}"])

    rows += three_ways(digits_run, "digits", f"model.weights={weights}")
    print(f"\nepochs: source ({args.source}) {args.epochs_source}, digits {args.epochs}; seed {args.seed}; "
          f"overrides: {' '.join(args.overrides) or 'none'}")
    print_table(rows, seconds=True)


if __name__ == "__main__":
    main()
