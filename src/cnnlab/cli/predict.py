"""`cnnlab-predict CKPT IMAGE|DIR [...]`: classify image files with a trained checkpoint, print the top-k labels.

Each image is converted to the training data's channels, resized to its input size and normalised with
its mean/std, all taken from the config saved inside the checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from cnnlab.cli.common import reports_config_errors, add_device_argument, add_trust_repo_argument
from cnnlab.data.loaders import Normalize
from cnnlab.engine.devices import resolve_device
from cnnlab.engine.checkpoint import find_checkpoint
from cnnlab.errors import ConfigError
from cnnlab.data.image_input import image_files, load_image
from cnnlab.run.weights import load_trained_model


PREDICT_BATCH = 256  # images decoded and classified together


def predict(ckpt: str, images: list[str], topk: int = 3, device: str = "auto",
            trusted_repos: tuple[str, ...] = ()) -> list[dict]:
    if topk < 1:
        raise ConfigError(f"--topk={topk} must be at least 1")
    images = image_files(images)
    target = resolve_device(device, key="--device")
    path, saved = find_checkpoint(ckpt, "checkpoint")
    loaded = load_trained_model(path, target, ckpt=saved, trusted_repos=trusted_repos)
    info = loaded.info
    mode = loaded.data.image_resize_mode()
    normalize = Normalize(info.mean, info.std, target)
    chunks = []
    for start in range(0, len(images), PREDICT_BATCH):  # a whole directory need not fit in memory at once
        batch = torch.stack([load_image(p, info.in_channels, info.input_size, mode)
                             for p in images[start:start + PREDICT_BATCH]]).to(target)
        with torch.inference_mode():
            chunks.append(loaded.model(normalize(batch.float())).float().softmax(dim=1).cpu())
    probs = torch.cat(chunks)
    k = min(topk, probs.shape[1])
    values, indices = probs.topk(k, dim=1)
    results = []
    for path, vals, idxs in zip(images, values.tolist(), indices.tolist()):
        results.append({"image": str(path), "top": [{"label": info.classes[i], "index": i, "prob": v}
                                                     for v, i in zip(vals, idxs)]})
    return results


@reports_config_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="cnnlab-predict", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a .ckpt file or a run dir (uses its best.ckpt, else last.ckpt)")
    parser.add_argument("images", nargs="+", help="image files (png, jpg, ...), or directories: every image in them")
    parser.add_argument("--topk", type=int, default=3, help="how many labels to print per image (default 3)")
    add_device_argument(parser)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    add_trust_repo_argument(parser)
    args = parser.parse_args(argv)
    results = predict(args.checkpoint, args.images, args.topk, args.device, tuple(args.trust_repo))
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        print()
        return
    for result in results:
        tops = ", ".join(f"{t['label']} ({t['prob']:.3f})" for t in result["top"])
        print(f"{result['image']}: {tops}")


if __name__ == "__main__":
    main()
