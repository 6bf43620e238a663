"""The classic transfer-learning experiment, offline: learn task A, then task B three ways.

By default task A is digits 0-4 of the bundled MNIST sample and task B digits 5-9; --task-a/--task-b pick
other class subsets (e.g. of data=shapes). After training on A, task B is
learned (1) with A's backbone frozen (only a new head trains), (2) fine-tuning everything from A's weights
with the backbone at a tenth of the head's learning rate, and (3) from scratch. Every B run gets the same
epochs, so the comparison is like for like. Prints a Markdown table of test accuracy on task B.

    python scripts/transfer_experiment.py                      # LeNet-5, 2 epochs on A, 2 on B
    python scripts/transfer_experiment.py --epochs-b 5 model=resnet20
    python scripts/transfer_experiment.py --task-a [0,1,2] --task-b [3,4,5] --limit-b 2 data=shapes model=resnet20
Extra arguments are config overrides applied to every run.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def run(overrides: list[str], out: Path) -> dict:
    from cnnlab.config.compose import compose_config
    from cnnlab.run.lifecycle import train

    return train(compose_config(["trainer.progress=none", "logger=none", *overrides], out), overrides=[])


def three_ways(train_run, task: str, start_from: str, scratch_label: str | None = None) -> list[tuple[str, dict]]:
    """The target task learned from the source weights (`start_from`, the override that loads them) with the
    backbone frozen, fine-tuned with the backbone at a tenth of the head's learning rate, and from scratch:
    (label, metrics) rows. `train_run(extra_overrides, name)` trains one of them (scripts/backbone_transfer.py
    uses it too)."""
    return [(f"{task}, backbone frozen (new head only)", train_run([start_from, "finetune.freeze=backbone"], "frozen")),
            (f"{task}, fine-tuned (backbone lr x0.1)",
             train_run([start_from, "finetune.backbone_lr_scale=0.1"], "finetuned")),
            (scratch_label or f"{task}, from scratch", train_run([], "scratch"))]


def print_table(rows: list[tuple[str, dict]], seconds: bool = False) -> None:
    """The rows' test accuracy and loss (and the seconds each took) as a Markdown table."""
    print("| run | test acc | test loss |" + (" seconds |" if seconds else ""))
    print("|---|---|---|" + ("---|" if seconds else ""))
    for name, metrics in rows:
        print(f"| {name} | {metrics['test/acc']:.4f} | {metrics['test/loss']:.4f} |"
              + (f" {metrics['seconds']:.0f} |" if seconds else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs-a", type=int, default=2)
    parser.add_argument("--epochs-b", type=int, default=2)
    parser.add_argument("--task-a", default="[0,1,2,3,4]", help="data.class_subset of task A")
    parser.add_argument("--task-b", default="[5,6,7,8,9]", help="data.class_subset of task B")
    parser.add_argument("--limit-b", type=int, default=None,
                        help="train task B on only this many batches per epoch (a task with little data)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    task_a = [f"data.class_subset={args.task_a}", f"trainer.max_epochs={args.epochs_a}", *args.overrides]
    task_b = [f"data.class_subset={args.task_b}", f"trainer.max_epochs={args.epochs_b}", *args.overrides]
    if args.limit_b:
        task_b.append(f"trainer.limit_train_batches={args.limit_b}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        a = run(task_a, tmp / "a")
        rows = [(f"task A (classes {args.task_a}), from scratch", a)]
        rows += three_ways(lambda extra, name: run([*task_b, *extra], tmp / name), "task B",
                           f"finetune.checkpoint={tmp / 'a'}", f"task B (classes {args.task_b}), from scratch")
    print(f"epochs: A {args.epochs_a}, B {args.epochs_b}"
          + (f" (B limited to {args.limit_b} batches per epoch)" if args.limit_b else "")
          + f"; overrides: {' '.join(args.overrides) or 'none'}")
    print_table(rows)


if __name__ == "__main__":
    main()
