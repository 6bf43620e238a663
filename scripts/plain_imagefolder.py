"""A hand-written torchvision training script on an image folder: the baseline scripts/bench_imagefolder.py
measures `cnnlab-train data=imagefolder model=resnet18` against.

What a user writes without a framework: torchvision.datasets.ImageFolder (PIL decoding per sample) and a
DataLoader (2 workers, shuffled, batch 64) over the same work cnnlab's run does by default at that size:

- split: stratified by class and seeded, round(images x 0.1) of each class for validation and as many for the
  test (cnnlab's data.split defaults); validation and test in batches of 256 (data.eval_batch_size);
- transforms: resize the shorter side to the input size and crop the centre (data.resize_mode=center_crop),
  then the default augment=mnist, RandomAffine(10 degrees, 8% shift, 0.9-1.1 zoom), on training images only,
  then normalisation (fixed ImageNet statistics here: a user has no measured ones);
- model: torchvision's resnet18(num_classes=...), which is what cnnlab's model=resnet18 builds at 64x64 and
  above (the same architecture and parameter count);
- AdamW(lr 3e-3, weight decay 5e-4, none on biases and norm weights), OneCycleLR over the trained steps,
  cross-entropy: cnnlab's optimizer=adamw / scheduler=onecycle / trainer.loss defaults.

It trains --steps batches, validates once, saves the weights (with --out), tests, and prints one JSON line per
training step and a summary line, all on stdout and flushed:

    {"event": "step", "step": 1, "time": 1733300000.123, "loss": 4.61}
    {"event": "summary", "start_to_first_step_s": 2.5, "img_s": 180.0, "warmup_steps": 5, ...}

start_to_first_step_s counts from the process's start (/proc/self/stat), img_s the steps after the warm-up.

    python scripts/plain_imagefolder.py /tmp/folder --steps 30
    python scripts/plain_imagefolder.py /tmp/folder --steps 30 --eval-batches 4 --out /tmp/plain-run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import torch.nn as nn
import torchvision
from torchvision.transforms import v2

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def process_age_s() -> float | None:
    """Seconds since this process was started (spawned), from /proc; None where there is no /proc."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
    except OSError:
        return None
    return uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of stat: starttime in clock ticks


def emit(**record) -> None:
    print(json.dumps(record), flush=True)


def stratified_split(targets: list[int], val: float, test: float, seed: int):
    """Per class, a seeded shuffle, then round(n x test) images for the test, round(n x val) for validation."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor(targets)
    train, val_idx, test_idx = [], [], []
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)].tolist()
        n_test, n_val = round(len(idx) * test), round(len(idx) * val)
        test_idx += idx[:n_test]
        val_idx += idx[n_test:n_test + n_val]
        train += idx[n_test + n_val:]
    return train, val_idx, test_idx


def evaluate(model, loader, device, max_batches: int | None) -> dict:
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    with torch.no_grad():
        for i, (x, y) in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            x, y = x.to(device), y.to(device)
            out = model(x)
            loss_sum += nn.functional.cross_entropy(out, y, reduction="sum").item()
            correct += (out.argmax(1) == y).sum().item()
            n += len(y)
    model.train()
    return {"images": n, "loss": loss_sum / max(n, 1), "acc": correct / max(n, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", help="image folder: <root>/<class>/<images>")
    parser.add_argument("--steps", type=int, default=30, help="training batches (default 30)")
    parser.add_argument("--size", type=int, nargs=2, default=[64, 64], metavar=("H", "W"), help="input size")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--eval-batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--eval-batches", type=int, default=None,
                        help="validate and test on at most this many batches each (default: the whole splits)")
    parser.add_argument("--warmup-steps", type=int, default=5, help="steps left out of img/s (default 5)")
    parser.add_argument("--device", default="auto", help="auto (cuda when there is one) | cpu | cuda")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", default=None, help="folder to save the trained weights in (default: none)")
    args = parser.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    torch.manual_seed(args.seed)

    size = list(args.size)
    prepare = [v2.ToImage(), v2.Resize(min(size)), v2.CenterCrop(size)]
    finish = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    train_tf = v2.Compose(prepare + [v2.RandomAffine(degrees=10, translate=(0.08, 0.08), scale=(0.9, 1.1))]
                          + finish)
    eval_tf = v2.Compose(prepare + finish)
    train_set = torchvision.datasets.ImageFolder(args.root, transform=train_tf)
    eval_set = torchvision.datasets.ImageFolder(args.root, transform=eval_tf)
    train_idx, val_idx, test_idx = stratified_split(train_set.targets, 0.1, 0.1, args.seed)
    pin = device.type == "cuda"
    train_loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(train_set, train_idx), batch_size=args.batch_size, shuffle=True,
        num_workers=args.workers, pin_memory=pin)

    def eval_loader(idx):
        return torch.utils.data.DataLoader(torch.utils.data.Subset(eval_set, idx), batch_size=args.eval_batch_size,
                                           num_workers=args.workers, pin_memory=pin)

    model = torchvision.models.resnet18(num_classes=len(train_set.classes)).to(device)
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]  # biases and norm weights
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=3e-3, betas=(0.9, 0.999), eps=1e-8)
    steps = min(args.steps, len(train_loader))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps, pct_start=0.25,
                                                   anneal_strategy="cos", div_factor=25.0, final_div_factor=1e3)
    criterion = nn.CrossEntropyLoss()

    times, sizes = [], []
    model.train()
    for step, (x, y) in enumerate(train_loader, start=1):
        x, y = x.to(device, non_blocking=pin), y.to(device, non_blocking=pin)
        loss = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        loss_value = loss.item()  # also waits for the device, so the time below is the step's end
        now = time.time()
        if step == 1:
            first_step_age = process_age_s()
        times.append(now)
        sizes.append(len(y))
        emit(event="step", step=step, time=now, loss=round(loss_value, 4))
        if step >= steps:
            break

    # steps 1..warm are the warm-up; img/s is over the others, from the end of step `warm` to the last one's
    warm = max(1, min(args.warmup_steps, len(times) - 1))
    img_s = sum(sizes[warm:]) / (times[-1] - times[warm - 1]) if len(times) > warm else float("nan")
    val = evaluate(model, eval_loader(val_idx), device, args.eval_batches)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        torch.save(model.state_dict(), os.path.join(args.out, "model.pt"))
    test = evaluate(model, eval_loader(test_idx), device, args.eval_batches)
    emit(event="summary", start_to_first_step_s=first_step_age, img_s=img_s, warmup_steps=warm, steps=len(times),
         images={"train": len(train_idx), "val": len(val_idx), "test": len(test_idx)},
         val=val, test=test, device=str(device), parameters=sum(p.numel() for p in model.parameters()))


if __name__ == "__main__":
    sys.exit(main())
