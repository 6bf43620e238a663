"""Checks of the data as the model receives it: class balance per split, the normalised batch's statistics,
images duplicated across splits, and a labelled grid of augmented training images to look at."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from cnnlab.diagnose.doctor_plots import plot_samples
from cnnlab.diagnose.report import Check
from cnnlab.diagnose.subject import Subject

SPLITS = ("train", "val", "test")


@dataclass
class SplitScan:
    """Labels and a content hash of every image read from one split (un-augmented, as loaded)."""

    labels: np.ndarray
    hashes: list[bytes]
    total: int  # images in the split; more than len(labels) when doctor.data.max_images cut the scan short


def scan_splits(subject: Subject) -> dict[str, SplitScan]:
    limit = int(subject.settings.data.max_images)
    loaders = {"train": subject.plain, "val": subject.val, "test": subject.test}
    scans = {}
    for name, loader in loaders.items():
        labels, hashes = [], []
        for x, y in loader:
            rows = x.detach().to("cpu", torch.float32).contiguous().numpy().reshape(len(x), -1)
            hashes += [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in rows]
            labels.append(y.detach().cpu().numpy())
            if len(hashes) >= limit:
                break
        scans[name] = SplitScan(np.concatenate(labels)[:limit] if labels else np.zeros(0, np.int64), hashes[:limit],
                                int(getattr(loader, "dataset_size", len(hashes))))
    return scans


def _scans(subject: Subject, work) -> dict[str, SplitScan]:
    if "scans" not in work.shared:
        work.shared["scans"] = scan_splits(subject)
    return work.shared["scans"]


def class_balance(subject: Subject, work) -> Check:
    """Images per class in each split: a missing class, or a largest class many times the smallest."""
    k, classes = subject.info.num_classes, subject.info.classes
    limit = float(subject.settings.data.imbalance_ratio)
    parts, problems, values = [], [], {}
    for name, scan in _scans(subject, work).items():
        counts = np.bincount(scan.labels, minlength=k)[:k] if len(scan.labels) else np.zeros(k, int)
        values[name] = counts.tolist()
        if not len(scan.labels):
            parts.append(f"{name} empty")
            continue
        low, high = int(counts.min()), int(counts.max())
        scanned = "" if len(scan.labels) == scan.total else f" (first {len(scan.labels)} of {scan.total})"
        parts.append(f"{name} {len(scan.labels)}{scanned}: {low}..{high} per class")
        missing = [classes[i] for i in np.flatnonzero(counts == 0)]
        if missing:
            problems.append(f"{name} has no images of class {', '.join(map(str, missing[:5]))}"
                            f"{' ...' if len(missing) > 5 else ''}")
        elif high / low > limit:
            problems.append(f"in {name} class {classes[int(counts.argmax())]} has {high / low:.1f}x the images of "
                            f"class {classes[int(counts.argmin())]}")
    measured = "; ".join(parts)
    if not problems:
        return Check("class balance", "PASS", measured, values=values)
    return Check("class balance", "WARN", measured, values=values, advice=(
        "; ".join(problems) + ": accuracy will favour the large classes. Report per-class accuracy (cnnlab-eval), "
        "resample or weigh the classes; a class missing from val/test needs larger data.split fractions"))


def input_statistics(subject: Subject, work) -> Check:
    """Per-channel mean and std of augmented, normalised training batches: about 0 and 1 when data.mean/std fit."""
    s = subject.settings.data
    batches = subject.batches(4, subject.train)
    x = torch.cat([b[0] for b in batches]).float()
    dims = [d for d in range(x.ndim) if d != 1]
    mean, std = x.mean(dim=dims).tolist(), x.std(dim=dims).tolist()
    configured_mean, configured_std = list(subject.info.mean), list(subject.info.std)
    # the images' own statistics in [0, 1] units, undoing the configured normalisation
    raw_mean = [m * cs + cm for m, cs, cm in zip(mean, configured_std, configured_mean)]
    raw_std = [v * cs for v, cs in zip(std, configured_std)]
    values = {"mean": mean, "std": std, "data.mean": configured_mean, "data.std": configured_std,
              "images_mean": raw_mean, "images_std": raw_std, "images": len(x)}
    measured = (f"per channel mean {_numbers(mean)}, std {_numbers(std)} over {len(x)} augmented training images "
                f"(want ~0 and ~1)")
    tolerance, (low, high) = float(s.mean_tolerance), (float(v) for v in s.std_range)
    far = any(abs(m) > 4 * tolerance for m in mean) or any(not low / 4 <= v <= 4 * high for v in std)
    off = any(abs(m) > tolerance for m in mean) or any(not low <= v <= high for v in std)
    if not off:
        return Check("input statistics", "PASS", measured, values=values)
    advice = (f"the inputs are not normalised: with data.mean={_numbers(configured_mean)} "
              f"data.std={_numbers(configured_std)} the images come out like this. Set the training images' "
              f"statistics, data.mean={_numbers(raw_mean)} data.std={_numbers(raw_std)} (measured on this batch), or "
              f"data.mean=null data.std=null to measure them on the training split")
    return Check("input statistics", "FAIL" if far else "WARN", measured, values=values, advice=advice)


def _numbers(values) -> str:
    return "[" + ", ".join(f"{v:.3g}" for v in values) + "]"


def duplicates(subject: Subject, work) -> Check:
    """Images that appear, pixel for pixel, in two splits: val/test scores then measure memory, not skill."""
    scans = _scans(subject, work)
    index = {name: {} for name in SPLITS}
    for name, scan in scans.items():
        for h, label in zip(scan.hashes, scan.labels.tolist()):
            index[name].setdefault(h, label)
    found, values, conflicts = [], {}, 0
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        shared = index[a].keys() & index[b].keys()
        in_b = sum(h in index[a] for h in scans[b].hashes)
        conflicts += sum(index[a][h] != index[b][h] for h in shared)
        values[f"{a}&{b}"] = in_b
        if in_b:
            found.append(f"{in_b} of {len(scans[b].hashes)} {b} images are also in {a}")
    within = sum(len(scan.hashes) - len(set(scan.hashes)) for scan in scans.values())
    values["repeated_within_splits"], values["different_labels"] = within, conflicts
    if not found:
        return Check("duplicates across splits", "PASS",
                     f"none among {sum(len(s.hashes) for s in scans.values())} images"
                     + (f" ({within} repeated within a split)" if within else ""), values=values)
    labels = f"; {conflicts} of them with a different label" if conflicts else ""
    return Check("duplicates across splits", "WARN", "; ".join(found) + labels, values=values, advice=(
        "remove the copies from val/test (or from train): those scores partly measure memory. Identical images "
        "with different labels are label noise"))


def sample_grid(subject: Subject, work) -> Check:
    """The first augmented training images with their labels, for a look at wrong labels or broken augmentation."""
    n = int(subject.settings.data.grid_images)
    x, y = [], []
    for xb, yb in subject.train:
        x.append(xb.detach().float().cpu())
        y.append(yb.detach().cpu())
        if sum(len(b) for b in x) >= n:
            break
    x, y = torch.cat(x)[:n], torch.cat(y)[:n]
    mean = torch.tensor(subject.info.mean).view(1, -1, 1, 1)
    std = torch.tensor(subject.info.std).view(1, -1, 1, 1)
    images = (x * std + mean).clamp(0, 1).numpy()  # undo the normalisation: what the camera saw
    classes = subject.info.classes
    titles = [_label(row, classes) for row in y]
    path = plot_samples(images, titles, work.path("samples.png"),
                        "Augmented training images as the model sees them, with their labels")
    work.figure("samples", path)
    return Check("sample grid", "PASS", f"{len(x)} augmented training images with their labels in {path.name}: look "
                 f"for wrong labels or broken augmentation", plots=[str(path)])


def _label(target: torch.Tensor, classes) -> str:
    if target.ndim == 0:
        return str(classes[int(target)])
    top = target.topk(2)  # MixUp/CutMix: the two classes mixed and their weights
    return " / ".join(f"{classes[int(i)]} {w:.1f}" for w, i in zip(top.values.tolist(), top.indices.tolist()) if w > 0)
