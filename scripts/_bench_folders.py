"""The generated image folders the image-folder benchmark trains on: seeded JPEGs in class folders."""

from __future__ import annotations

import json
import math
import shutil
import time
from multiprocessing import Pool
from pathlib import Path

CLASSES, PIXELS = 100, 64  # the benchmark's defaults: 100 classes of 64x64 JPEGs

# ---------------------------------------------------------------- image folders

def folder_name(images: int, classes: int, size: int, seed: int) -> str:
    return f"jpeg{size}px-{classes}c-{images}-seed{seed}"


def make_image(seed: int, index: int, label: int, classes: int, size: int):
    """One RGB image of class `label`: a class-coloured shape (its kind and hue from the class) at a random place
    and scale over a noisy two-colour gradient, so classes are learnable and images are not flat (JPEG size and
    decode time like a photo's thumbnail)."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng([seed, index])
    hue = label / classes
    base = np.array([0.5 + 0.5 * math.cos(2 * math.pi * (hue + k / 3)) for k in range(3)]) * 255
    top, bottom = rng.uniform(0, 255, 3), base * rng.uniform(0.3, 0.7)
    ramp = np.linspace(0, 1, size)[:, None, None]
    pixels = top * (1 - ramp) + bottom * ramp + rng.normal(0, 24, (size, size, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    colour = tuple(int(c) for c in np.clip(base + rng.normal(0, 20, 3), 0, 255))
    for _ in range(1 + label % 3):
        r = rng.uniform(0.15, 0.35) * size
        cx, cy = rng.uniform(r, size - r, 2)
        kind = (label // 3) % 4
        box = (cx - r, cy - r, cx + r, cy + r)
        if kind == 0:
            draw.ellipse(box, fill=colour)
        elif kind == 1:
            draw.rectangle(box, fill=colour)
        elif kind == 2:
            draw.regular_polygon((cx, cy, r), 3 + label % 5, rotation=float(rng.uniform(0, 360)), fill=colour)
        else:
            draw.line(box, fill=colour, width=max(2, int(r / 3)))
    return image


def _write_chunk(job) -> int:
    folder, seed, start, stop, classes, size = job
    for i in range(start, stop):
        label = i % classes
        make_image(seed, i, label, classes, size).save(Path(folder) / f"class_{label:03d}" / f"{i:07d}.jpg",
                                                       quality=90)
    return stop - start


def generate_folder(data_root: Path, images: int, *, classes: int = CLASSES, size: int = PIXELS, seed: int = 0,
                    workers: int = 2, chunk: int = 250, quiet: bool = False) -> Path:
    """`images` JPEGs of size x size in `classes` class folders (image i in class i % classes) under data_root,
    written in parallel; a folder a previous call finished (its .json marker beside it matches) is reused."""
    folder = data_root / folder_name(images, classes, size, seed)
    marker = folder.with_suffix(".json")
    spec = {"images": images, "classes": classes, "size": size, "seed": seed, "format": 1}
    if marker.exists() and folder.is_dir():
        try:
            if json.loads(marker.read_text()) == spec:
                return folder
        except ValueError:
            pass
    shutil.rmtree(folder, ignore_errors=True)  # a half-written folder from an interrupted call
    marker.unlink(missing_ok=True)
    for label in range(classes):
        (folder / f"class_{label:03d}").mkdir(parents=True, exist_ok=True)
    jobs = [(str(folder), seed, s, min(s + chunk, images), classes, size) for s in range(0, images, chunk)]
    start = time.perf_counter()
    if workers > 1 and len(jobs) > 1:
        with Pool(min(workers, len(jobs))) as pool:
            done = 0
            for n in pool.imap_unordered(_write_chunk, jobs):
                done += n
                if not quiet and (done % 10_000 < chunk or done == images):
                    print(f"  generated {done:,}/{images:,} images", flush=True)
    else:
        for job in jobs:
            _write_chunk(job)
    if not quiet:
        print(f"  {images:,} images in {folder} ({time.perf_counter() - start:.0f} s)", flush=True)
    marker.write_text(json.dumps(spec))
    return folder


def split_sizes(images: int, classes: int, val: float = 0.1, test: float = 0.1) -> dict[str, int]:
    """Images per split of a folder with image i in class i % classes, split per class as cnnlab's
    stratified_split (and the plain script) do: round(n x test), round(n x val), the rest for training."""
    sizes = {"train": 0, "val": 0, "test": 0}
    for label in range(classes):
        n = images // classes + (1 if label < images % classes else 0)
        n_test, n_val = round(n * test), round(n * val)
        sizes["test"] += n_test
        sizes["val"] += n_val
        sizes["train"] += n - n_test - n_val
    return sizes


# ---------------------------------------------------------------- memory of a process tree

