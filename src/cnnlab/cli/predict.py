"""`cnnlab-predict CKPT IMAGE|DIR [...]`: classify image files with a trained checkpoint, print the top-k labels.

Each image is converted to the training data's channels, resized to its input size and normalised with
its mean/std, all taken from the config saved inside the checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys

from cnnlab.cli.common import reports_config_errors, add_device_argument, add_trust_repo_argument
from cnnlab.run.prediction import PREDICT_BATCH, predict  # noqa: F401  (what callers import)


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
