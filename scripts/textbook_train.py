"""A textbook fp32 training script for ResNet-20 on the shapes set: the baseline scripts/bench_whole_run.py measures
cnnlab's whole default run against.

What a course's plain PyTorch script does: a per-sample Dataset with torchvision transforms (pad-4 random crop,
horizontal flip, to float, normalise) behind a shuffling DataLoader with worker processes, the model in NCHW and
fp32 throughout, SGD with momentum and weight decay (not on biases and batch-norm weights), a validation pass after
each epoch that keeps the weights with the lowest validation loss, and a test pass of those at the end. Only the
data and the model come from cnnlab, so that both sides train on the same images (the same generated shapes and
the same seeded stratified split as `cnnlab-train data=shapes seed=S`) and the same network with the same
initialisation. The settings are configs/optimizer/sgd.yaml's and configs/data/shapes.yaml's, which are what
that run resolves (its .hydra/config.yaml): batch 128, evaluation batch 500, lr 0.05, momentum 0.9, no Nesterov,
weight decay 5e-4 exempting biases and norm weights, no label smoothing, no schedule, the test on the best epoch
by validation loss. Prints one JSON line: test accuracy, final training loss, best epoch, epochs, seconds.

    python scripts/textbook_train.py [--epochs 3] [--seed 42] [--workers 2] [--limit-batches N]
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from _bench import PerSample

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def shapes_splits(seed: int):
    """The shapes images and cnnlab's train/val/test split of them for `seed`, and the set's mean and std."""
    from cnnlab.data.shapes import generate
    from cnnlab.data.splits import stratified_split

    data = OmegaConf.load(CONFIGS / "data" / "shapes.yaml")
    base = OmegaConf.load(CONFIGS / "base" / "data.yaml")
    images, labels = generate(int(data.num_samples), int(data.image_size), int(data.generator_seed), float(data.noise))
    split = stratified_split(labels, float(base.split.val), float(base.split.test), seed)
    parts = {name: (images[index], labels[index]) for name, index in split.items()}
    batch_sizes = int(base.batch_size), int(data.eval_batch_size)
    return parts, list(data.mean), list(data.std), *batch_sizes, int(data.num_classes)


def resnet20(num_classes: int, seed: int):
    from cnnlab.models import build_model

    torch.manual_seed(seed)  # the run's seed fixes the initial weights, as in cnnlab
    return build_model(OmegaConf.load(CONFIGS / "model" / "resnet20.yaml"), 3, num_classes, (32, 32))


def sgd(model):
    """SGD with configs/optimizer/sgd.yaml's settings; weight decay on conv and linear weights only (biases and
    batch-norm weights are the 1-D parameters), as cnnlab's decay_norm_and_bias: false does."""
    cfg = OmegaConf.load(CONFIGS / "optimizer" / "sgd.yaml")
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return torch.optim.SGD([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr,
                           momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)


def evaluate(model, loader) -> tuple[float, float]:
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    with torch.no_grad():
        for x, y in loader:
            logits = model(x)
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
            n += len(y)
    return loss_sum / n, correct / n


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (a course's usual 2)")
    parser.add_argument("--limit-batches", type=int, help="train on the first N batches of each epoch (tests)")
    args = parser.parse_args()
    start = time.perf_counter()

    parts, mean, std, batch_size, eval_batch_size, num_classes = shapes_splits(args.seed)
    to_input = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    train_tf = v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip(), *to_input])
    eval_tf = v2.Compose(to_input)
    train_loader = DataLoader(PerSample(*parts["train"], train_tf), batch_size=batch_size, shuffle=True,
                              num_workers=args.workers, persistent_workers=args.workers > 0)
    val_loader = DataLoader(PerSample(*parts["val"], eval_tf), batch_size=eval_batch_size)
    test_loader = DataLoader(PerSample(*parts["test"], eval_tf), batch_size=eval_batch_size)

    model = resnet20(num_classes, args.seed)
    optimizer = sgd(model)
    best_loss, best_state = float("inf"), None
    for epoch in range(1, args.epochs + 1):
        model.train()
        total, count, epoch_start = 0.0, 0, time.perf_counter()
        for step, (x, y) in enumerate(train_loader):
            if args.limit_batches and step == args.limit_batches:
                break
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(y)
            count += len(y)
        val_loss, val_acc = evaluate(model, val_loader)
        if val_loss < best_loss:
            best_loss, best_state, best_epoch = val_loss, copy.deepcopy(model.state_dict()), epoch
        print(f"epoch {epoch}: train loss {total / count:.4f}  val loss {val_loss:.4f}  val acc {val_acc:.4f}  "
              f"{time.perf_counter() - epoch_start:.1f} s", flush=True)
    model.load_state_dict(best_state)
    test_loss, test_acc = evaluate(model, test_loader)
    print(json.dumps({"test_acc": test_acc, "test_loss": test_loss, "train_loss": total / count,
                      "best_epoch": best_epoch, "epochs": args.epochs, "seconds": time.perf_counter() - start}))


if __name__ == "__main__":
    main()
