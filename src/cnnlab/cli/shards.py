"""cnnlab-shards: an image folder (<root>/<class>/<images>, as data=imagefolder lists it) -> WebDataset tar shards
and the manifest data=webdataset reads (cnnlab.data.shardset).

    cnnlab-shards ~/photos/flowers --out /data/flowers-shards --maxcount 1000 --val-fraction 0.1 --test-fraction 0.1

Samples are shuffled across the shards with --seed; --val-fraction / --test-fraction hold out a stratified split
(cnnlab.data.splits) written as shard sets of their own. The images' bytes are kept as they are, or, with
--size H W, decoded, brought to that size and re-encoded as JPEG (--quality). Everything is checked before the
first write, and the command writes only into a directory that is new, empty, or holds its own earlier output
(a manifest it wrote): its earlier shards are replaced, anything else there is left alone.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import typing
from pathlib import Path

import numpy as np
import torch

from cnnlab.cli.common import reports_config_errors
from cnnlab.data import imagefolder as folder
from cnnlab.data.shardset import FORMAT, MANIFEST, SPLITS, brace_pattern, webdataset
from cnnlab.data.splits import stratified_split
from cnnlab.errors import ConfigError
from cnnlab.util.outpaths import check_folder, file_kind, missing_dirs, remove_empty, write_atomic, write_error
from cnnlab.config.fields import ResizeMode

STATS_LIMIT = 2000  # training images the mean/std are measured on (drawn with the seed)
GRAY = np.array([0.299, 0.587, 0.114])  # ITU-R 601-2 luma, as Pillow converts RGB to grayscale


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="cnnlab-shards", description="Write an image folder as WebDataset tar shards for data=webdataset.")
    parser.add_argument("root", type=Path, metavar="ROOT", help="the image folder: ROOT/<class>/<image files>")
    parser.add_argument("--out", type=Path, required=True,
                        help="the directory the shards and cnnlab-shards.json go in (new, empty, or written by "
                             "cnnlab-shards before)")
    parser.add_argument("--maxcount", type=int, default=1000, help="images per shard, at most (default 1000)")
    parser.add_argument("--maxsize", type=float, default=1000.0, metavar="MB",
                        help="megabytes per shard, at most (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="the shuffle across shards and the split (default 0)")
    parser.add_argument("--val-fraction", type=float, default=0.0, help="held out as val shards (default 0)")
    parser.add_argument("--test-fraction", type=float, default=0.0, help="held out as test shards (default 0)")
    parser.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="re-encode every image at this size as JPEG (default: keep the files' bytes)")
    parser.add_argument("--channels", type=int, choices=(1, 3), default=3,
                        help="with --size: RGB (3, default) or grayscale (1) JPEGs")
    parser.add_argument("--resize-mode", choices=typing.get_args(ResizeMode), default="center_crop",
                        help="with --size: as data.resize_mode (default center_crop)")
    parser.add_argument("--quality", type=int, default=90, help="with --size: JPEG quality 1..95 (default 90)")
    return parser.parse_args(argv)


def check_args(args) -> None:
    for flag, value, ok, accepted in (
            ("--maxcount", args.maxcount, args.maxcount > 0, "a positive integer"),
            ("--maxsize", args.maxsize, args.maxsize > 0, "a positive number of megabytes"),
            ("--val-fraction", args.val_fraction, 0 <= args.val_fraction < 1, "a fraction in [0, 1)"),
            ("--test-fraction", args.test_fraction, 0 <= args.test_fraction < 1, "a fraction in [0, 1)"),
            ("--quality", args.quality, 1 <= args.quality <= 95, "an integer in 1..95"),
            ("--size", args.size, args.size is None or min(args.size) > 0, "two positive integers H W")):
        if not ok:
            raise ConfigError(f"{flag}={value} must be {accepted}")
    if args.val_fraction + args.test_fraction >= 1:
        raise ConfigError(f"--val-fraction + --test-fraction = {args.val_fraction + args.test_fraction:g} leaves "
                          f"nothing to train on; keep it below 1")


def earlier_output(out: Path) -> list[Path]:
    """The files of cnnlab-shards' earlier output in `out` (its manifest last), after checking that the command
    may write there: a new or empty directory, or one holding a manifest it wrote."""
    key = f"--out={out}"
    kind = file_kind(out)
    if kind == "missing":
        check_folder(out, key)
        return []
    if kind != "dir":
        raise ConfigError(f"{key} is {'a file' if kind == 'file' else kind}, not a directory; give a new or empty "
                          f"directory")
    check_folder(out, key)
    manifest = out / MANIFEST
    if not manifest.is_file():
        if any(os.scandir(out)):
            raise ConfigError(f"{key} holds files and no {MANIFEST}, so cnnlab-shards did not write it; they are "
                              f"left as they are: give a new or empty directory")
        return []
    try:
        old = json.loads(manifest.read_text())
        assert old.get("format") == FORMAT
        names = [name for split in old["splits"].values() for name in split["shards"]]
    except (ValueError, AssertionError, KeyError, TypeError, AttributeError):
        raise ConfigError(f"{key}: {manifest} was not written by cnnlab-shards; it and the rest of {out} are left "
                          f"as they are: give a new or empty directory") from None
    return [out / Path(name).name for name in names] + [manifest]


def measure(files: list[Path], args) -> dict:
    """Per-channel mean and std (RGB and grayscale) of up to STATS_LIMIT training images, drawn with the seed."""
    pick = torch.randperm(len(files), generator=torch.Generator().manual_seed(args.seed))[:STATS_LIMIT].tolist()
    total, squares, count = np.zeros(4), np.zeros(4), 0
    for i in pick:
        x = load(files[i], args, 3).permute(1, 2, 0).numpy().astype(np.float64) / 255.0
        x = np.concatenate([x, (x @ GRAY)[..., None]], axis=2).reshape(-1, 4)
        total += x.sum(axis=0)
        squares += (x * x).sum(axis=0)
        count += len(x)
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean * mean, 1e-6))
    r4 = [round(float(v), 4) for v in mean], [round(max(float(v), 1e-3), 4) for v in std]
    return {"images": len(pick), "rgb": {"mean": r4[0][:3], "std": r4[1][:3]},
            "gray": {"mean": r4[0][3:], "std": r4[1][3:]}}


def load(path: Path, args, channels: int) -> torch.Tensor:
    """One image decoded (and brought to --size), as data=imagefolder decodes it; ConfigError if unreadable."""
    try:
        if args.size:
            return folder.read_image(path, channels, tuple(args.size), args.resize_mode)
        return folder.decode(path, channels)
    except folder.UnreadableImage as bad:
        raise ConfigError(f"ROOT: {bad}; remove or replace the file") from None


def encoded(path: Path, args) -> tuple[str, bytes]:
    """The sample's image entry: (extension, bytes), the file's own or re-encoded as JPEG at --size."""
    if args.size is None:
        return path.suffix.lower().lstrip("."), path.read_bytes()
    from PIL import Image  # only re-encoding needs Pillow here

    pixels = load(path, args, args.channels).permute(1, 2, 0).numpy()
    image = Image.fromarray(pixels[:, :, 0] if args.channels == 1 else pixels, "L" if args.channels == 1 else "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=args.quality)
    return "jpg", buffer.getvalue()


def write_split(split: str, files: list[Path], labels: list[int], out: Path, args, num_classes: int, bar,
                created: set[Path]) -> dict:
    """One split's shards; every file opened is added to `created` (removed again if the command fails)."""
    wds = webdataset()
    shards: dict[str, int] = {}
    per_class: dict[str, list[int]] = {}
    writer = wds.ShardWriter(str(out / f"{split}-%06d.tar"), maxcount=args.maxcount,
                             maxsize=int(args.maxsize * 1e6), verbose=0)
    try:
        for i, (path, label) in enumerate(zip(files, labels)):
            ext, data = encoded(path, args)
            writer.write({"__key__": f"{split}-{i:07d}", ext: data, "cls": str(label)})
            created.add(Path(writer.fname))
            name = Path(writer.fname).name
            shards[name] = shards.get(name, 0) + 1
            per_class.setdefault(name, [0] * num_classes)[label] += 1
            bar.update(1)
    finally:
        created.add(Path(writer.fname))  # also a shard opened for a sample that failed
        writer.close()
    counts = [sum(c[k] for c in per_class.values()) for k in range(num_classes)]
    return {"pattern": brace_pattern(split, len(shards)), "samples": len(files), "class_counts": counts,
            "shards": shards, "shard_class_counts": per_class}


@reports_config_errors
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    check_args(args)
    root = args.root.expanduser()
    classes = folder.find_classes(root, "ROOT")
    if len(classes) < 2:
        raise ConfigError(f"ROOT={root} has a single class folder ({classes[0]}); a classifier needs at least two: "
                          f"ROOT/<class>/<image files>")
    files, labels = folder.list_images(root, classes, "ROOT", require_all=True)
    out = args.out.expanduser()
    old = earlier_output(out)
    webdataset()  # the extra is installed: said before anything is measured or written
    labels_t = torch.as_tensor(labels, dtype=torch.long)
    try:
        idx = stratified_split(labels_t, args.val_fraction, args.test_fraction, args.seed)
    except ConfigError as bad:  # its message names data.split.*: say it with this command's options
        raise ConfigError(str(bad).replace("data.split.val", "--val-fraction").replace("data.split.test",
                                                                                      "--test-fraction")) from None
    order = {}
    for split in SPLITS:
        chosen = idx[split][torch.randperm(len(idx[split]), generator=torch.Generator().manual_seed(args.seed))]
        if len(chosen) or split == "train":
            order[split] = chosen.tolist()
    if not order["train"]:
        raise ConfigError(f"ROOT={root}: no image is left for training; lower --val-fraction / --test-fraction")
    stats = measure([files[i] for i in order["train"]], args)  # decodes a sample of images: before any write

    from tqdm import tqdm  # the progress bar, only once writing starts

    for path in sorted(old, key=lambda p: p.name != MANIFEST):  # its own earlier output, the manifest first
        path.unlink(missing_ok=True)
    made = missing_dirs(out)  # removed again if the command fails
    out.mkdir(parents=True, exist_ok=True)
    splits, created = {}, set()
    try:
        with tqdm(total=len(files), unit="img", desc="cnnlab-shards", disable=None) as bar:
            for split, chosen in order.items():
                splits[split] = write_split(split, [files[i] for i in chosen], [labels[i] for i in chosen], out,
                                            args, len(classes), bar, created)
    except BaseException as bad:  # a full disk, an unreadable image, Ctrl-C: no partial shard set is left behind
        for path in created:
            path.unlink(missing_ok=True)
        remove_empty(made)
        if isinstance(bad, OSError):
            raise write_error(out, bad) from None
        raise
    manifest = {"format": FORMAT, "classes": classes, "root": str(root.resolve()), "seed": args.seed,
                "size": list(args.size) if args.size else None, "channels": args.channels if args.size else None,
                "encoding": "jpeg" if args.size else "original", "stats": stats, "splits": splits}
    write_atomic(out / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    for split, entry in splits.items():
        print(f"{split}: {entry['samples']} images in {len(entry['shards'])} shard(s) {out / entry['pattern']}")
    print(f"manifest: {out / MANIFEST} ({len(classes)} classes; mean/std measured on {stats['images']} training "
          f"images)")
    train = out.resolve() / splits["train"]["pattern"]
    print(f"train with: cnnlab-train data=webdataset 'data.train_shards=\"{train}\"'")


if __name__ == "__main__":
    main()
