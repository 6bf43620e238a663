"""`cnnlab-explain RUN_DIR [IMAGE|DIR ...]`: pictures of what a trained network learned.

Writes PNG files into RUN_DIR/explain (or --out) and the same images into the run's TensorBoard event files
under the `explain/` tags (the Images tab):
  filters_<layer>.png       the learned filters of the first conv layer, or of each --layer
  feature_maps_<layer>.png  what a few conv layers (or each --layer) output for the images
  gradcam.png               Grad-CAM heat maps over the images, with predicted and true labels
  mistakes.png              the most confidently wrong test images
The images are the files given, or a few test images (one class after another); the test split is rebuilt
from the run's saved config, as cnnlab-eval does.

A PNG already in the output folder under one of these names is replaced only when cnnlab wrote it (its PNG
text chunk "Software" is "cnnlab"; in the default RUN_DIR/explain also a matplotlib PNG from before that mark);
any other file is refused before the model is loaded, and left as it is.
Without --out, the run dir must be writable; with --out elsewhere, a read-only run dir only loses the
TensorBoard copy (with a warning).
"""

from __future__ import annotations

import argparse

from cnnlab.cli.common import reports_config_errors, add_device_argument, add_trust_repo_argument
from cnnlab.visualize.explaining import DEFAULT_IMAGES, TENSORBOARD_PREFIX, explain


@reports_config_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="cnnlab-explain", description=__doc__.splitlines()[0],
                                     epilog="Reading the pictures: docs/explain.md")
    parser.add_argument("run_dir", help="a run dir (uses its best.ckpt, else last.ckpt) or a .ckpt file")
    parser.add_argument("image_paths", nargs="*", metavar="IMAGE",
                        help="image files or directories to explain (default: a few test images)")
    parser.add_argument("--layer", action="append", metavar="NAME",
                        help="a conv layer whose filters and feature maps to draw; repeat for several "
                             "(default: filters of the first conv layer, feature maps of a few spread over the depth)")
    parser.add_argument("--gradcam-layer", metavar="NAME",
                        help="the layer Grad-CAM weighs (default: the last one with a spatial output, e.g. the "
                             "last conv block)")
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGES, dest="n_images", metavar="N",
                        help=f"how many test images to explain when no IMAGE is given (default {DEFAULT_IMAGES})")
    parser.add_argument("--out", metavar="DIR", help="where the PNG files go (default RUN_DIR/explain)")
    add_device_argument(parser)
    add_trust_repo_argument(parser)
    args = parser.parse_args(argv)
    result = explain(args.run_dir, args.image_paths, args.layer, args.gradcam_layer, args.n_images, args.out,
                     args.device, tuple(args.trust_repo))
    for path in result.files:
        print(f"wrote {path}")
    print(f"the same images are in TensorBoard under {TENSORBOARD_PREFIX}* (step {result.epoch})")


if __name__ == "__main__":
    main()
