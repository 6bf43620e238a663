"""`cnnlab-export RUN_DIR|CKPT --format onnx|torchscript|exported [--out PATH]`: a trained model as one file that
runs without cnnlab, with the data's normalisation folded in, and a JSON file beside it that says how to feed it.

The exported model takes float32 images N x C x H x W with values in [0, 1] (the 0..255 pixel values divided
by 255), C and H x W as in training (the JSON's input.channels and input.size), and returns N x classes logits
(softmax gives the probabilities). Any batch size N works.

  onnx         model.onnx: torch.onnx.export's torch.export-based exporter (needs onnxscript; run it with
               onnxruntime: pip install 'cnnlab[export]')
  torchscript  model.torchscript.pt: torch.jit.trace, load with torch.jit.load
  exported     model.pt2: torch.export's ExportedProgram (torch.export.save), load with torch.export.load(...).module()

Beside the model: <model file>.json with the class names, input size, channels and the input convention.

An existing file at --out (or at PATH.json) is overwritten only when it is this command's own earlier output:
the model file with the JSON description beside it that names it, or that description. Anything else (a
checkpoint, metrics.json, ...) is refused before anything is loaded and left as it is.
"""

from __future__ import annotations

import argparse

from cnnlab.cli.common import reports_config_errors, add_trust_repo_argument
from cnnlab.run.exporting import FORMATS, export, export_model, load_exported  # noqa: F401  (what callers import)


@reports_config_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="cnnlab-export", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a .ckpt file or a run dir (uses its best.ckpt, else last.ckpt)")
    parser.add_argument("--format", required=True, choices=list(FORMATS),
                        help="onnx (onnxruntime), torchscript (torch.jit.load) or exported (torch.export.load)")
    parser.add_argument("--out", metavar="PATH",
                        help="the model file to write (default RUN_DIR/export/model.onnx | model.torchscript.pt "
                             "| model.pt2); its description goes to PATH.json")
    add_trust_repo_argument(parser)
    args = parser.parse_args(argv)
    result = export(args.checkpoint, args.format, args.out, tuple(args.trust_repo))
    diff = result["check_max_abs_diff"]
    print(f"wrote {result['path']} ({args.format}) and {result['path']}.json")
    print(f"  input: {result['input']['dtype']} {result['input']['shape']} in [0, 1] ({result['input']['color']}), "
          f"normalisation folded in; output: logits over {result['num_classes']} classes")
    if diff is not None:
        print(f"  check: max |logit difference| to the PyTorch model on 3 images: {diff:.2e}")


if __name__ == "__main__":
    main()
