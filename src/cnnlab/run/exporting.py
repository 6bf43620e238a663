"""A trained model as one file that runs without cnnlab (onnx, torchscript, exported), the data's normalisation
folded in, with a JSON description beside it: the work of `cnnlab-export` (cnnlab.cli.export) and of the Python
API's Run.export. The formats and the input convention are described in cnnlab.cli.export."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from cnnlab import __version__
from cnnlab.data.bundle import DataInfo
from cnnlab.engine.checkpoint import CKPT_DIR, find_checkpoint
from cnnlab.errors import ConfigError
from cnnlab.run.weights import load_trained_model
from cnnlab.util.outpaths import check_target, read_text, write_atomic

log = logging.getLogger("cnnlab")

FORMATS = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt", "exported": "model.pt2"}
INPUT_NAME, OUTPUT_NAME = "image", "logits"
ONNX_NEEDS = ("onnxscript", "onnx")  # torch.onnx.export(dynamo=True) translates the ExportedProgram with these
CHECK_TOLERANCE = 1e-4  # largest |logit difference| to the PyTorch model on the check batch before a warning


class Preprocessed(nn.Module):
    """The trained model behind its normalisation: input in [0, 1], (x - mean) / std inside, logits out
    (the main head of a model with auxiliary heads)."""

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        self.model = model
        std_t = torch.tensor([float(s) for s in std]).view(1, -1, 1, 1)
        mean_t = torch.tensor([float(m) for m in mean]).view(1, -1, 1, 1)
        self.register_buffer("scale", 1.0 / std_t)
        self.register_buffer("shift", -mean_t / std_t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x * self.scale + self.shift)
        return out if isinstance(out, torch.Tensor) else out[0]


def default_out(path: Path, fmt: str) -> Path:
    """RUN_DIR/export/<model file>, the run dir being the checkpoint's (checkpoints/x.ckpt -> its parent)."""
    run_dir = path.parent.parent if path.parent.name == CKPT_DIR else path.parent
    return run_dir / "export" / FORMATS[fmt]


def export(checkpoint: str, fmt: str, out: str | None = None, trusted_repos: tuple[str, ...] = ()) -> dict:
    """Export the checkpoint (a .ckpt file or a run dir: best.ckpt, else last.ckpt) to `fmt`; returns the
    description written beside the model (with "path": the model file)."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format={fmt}: choose one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        missing = [m for m in ONNX_NEEDS if importlib.util.find_spec(m) is None]
        if missing:
            raise ConfigError(f"--format=onnx needs {' and '.join(missing)} (torch's ONNX exporter): "
                              f"pip install 'cnnlab[export]'")
    path, ckpt = find_checkpoint(checkpoint, "checkpoint")
    target = Path(out).expanduser() if out else default_out(path, fmt)
    if target.is_dir():
        raise ConfigError(f"--out={out}: is a directory; give the model file's path, e.g. {target / FORMATS[fmt]}")
    check_export_target(target, f"--out={out}" if out else f"the default --out ({target})")
    loaded = load_trained_model(path, torch.device("cpu"), ckpt=ckpt, trusted_repos=trusted_repos)
    meta = {"checkpoint": str(path), "epoch": loaded.epoch, "model": str(loaded.cfg.model.name),
            "resize_mode": loaded.data.image_resize_mode()}
    return export_model(loaded.model, loaded.info, fmt, target, meta)


def description_path(out: Path) -> Path:
    return Path(out).with_name(Path(out).name + ".json")


def _describes(json_file: Path, model_name: str) -> bool:
    """Whether `json_file` is a description this command wrote for a model file called `model_name`."""
    try:
        saved = json.loads(read_text(json_file) or "null")
    except ValueError:
        return False
    return (isinstance(saved, dict) and saved.get("file") == model_name and saved.get("format") in FORMATS
            and "cnnlab_version" in saved)


def check_export_target(out: Path, key: str) -> None:
    """The model file and its description may be written: each is absent or this command's own earlier output
    (the description names the model file), and the folder is writable; else ConfigError, nothing touched."""
    out = Path(out)
    sidecar = description_path(out)
    how = f"no {sidecar.name} written by cnnlab-export beside it names it"
    check_target(sidecar, key, "cnnlab-export", lambda p: _describes(p, out.name),
                 f"it is not the description of {out.name} that cnnlab-export writes")
    check_target(out, key, "cnnlab-export", lambda p: _describes(sidecar, p.name), how)


def export_model(model: nn.Module, info: DataInfo, fmt: str, out: Path, meta: dict | None = None) -> dict:
    """Write `model` (in eval mode, on the CPU) with `info`'s normalisation folded in as `fmt` to `out`, and
    the description to `out`.json. An export that fails names the layer it fails in. The file is made in
    memory and checked there; only then are the model and its description written (each atomically)."""
    out = Path(out)
    check_export_target(out, f"--out={out}")
    wrapped = Preprocessed(model.cpu().eval(), info.mean, info.std).eval()
    h, w = info.input_size
    sample = torch.rand(2, info.in_channels, h, w, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        if fmt == "torchscript":
            data = _write_torchscript(wrapped, sample)
        else:
            program = _torch_export(wrapped, sample, fmt)
            data = _exported_bytes(program) if fmt == "exported" else _write_onnx(wrapped, program, sample)
    description = _description(info, fmt, out, meta or {})
    description["check_max_abs_diff"] = _check(wrapped, fmt, data, info)
    sidecar = description_path(out)
    existed = out.exists()
    write_atomic(out, data)
    try:
        write_atomic(sidecar, json.dumps(description, indent=2) + "\n")
    except BaseException:
        if not existed:  # the model file is new: without its description it would not be known as ours
            out.unlink(missing_ok=True)
        raise
    return {**description, "path": str(out)}


# ---- the three formats ----------------------------------------------------------------------------------------
def _torch_export(wrapped: nn.Module, sample: torch.Tensor, fmt: str):
    """torch.export.export with a dynamic batch dimension; a failure names the layer that cannot be traced."""
    def attempt(module, args):
        return torch.export.export(module, args, dynamic_shapes=_batch_dim(args), strict=False)

    try:
        with _quiet_exporter():
            return attempt(wrapped, (sample,))
    except Exception as failed:  # noqa: BLE001 (the exporter raises many types; each becomes one message)
        raise _layer_error(fmt, wrapped, sample, attempt, failed) from None


def _exported_bytes(program) -> bytes:
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


def _write_onnx(wrapped: nn.Module, program, sample: torch.Tensor) -> bytes:
    def attempt(module, args):
        sub = program if module is wrapped else torch.export.export(module, args, dynamic_shapes=_batch_dim(args),
                                                                    strict=False)
        return torch.onnx.export(sub, args, dynamo=True, external_data=False, verbose=False, report=False,
                                 input_names=[INPUT_NAME] if module is wrapped else None,
                                 output_names=[OUTPUT_NAME] if module is wrapped else None)

    try:
        with _quiet_exporter():
            onnx_program = attempt(wrapped, (sample,))
            _name_batch_dim(onnx_program)
            return onnx_program.model_proto.SerializeToString()
    except Exception as failed:  # noqa: BLE001
        raise _layer_error("onnx", wrapped, sample, attempt, failed) from None


def _name_batch_dim(onnx_program) -> None:
    """The dynamic first dimension of input and output is called "batch" (torch.export names it s0, s77, ...)."""
    onnx_program.rename_axes({onnx_program.model.graph.inputs[0].shape[0]: "batch"})


def _write_torchscript(wrapped: nn.Module, sample: torch.Tensor) -> bytes:
    def attempt(module, args):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch marks torch.jit deprecated; its files still load
            return torch.jit.trace(module, args, check_trace=False)

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", torch.jit.TracerWarning)
            traced = attempt(wrapped, (sample,))
        seen = {(str(w.message).splitlines()[0], w.filename, w.lineno) for w in caught
                if issubclass(w.category, torch.jit.TracerWarning)}
        for message, filename, lineno in sorted(seen):  # the trace keeps the branch the sample took there
            log.warning("tracing: %s (%s:%d)", message, filename, lineno)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            buffer = io.BytesIO()
            torch.jit.save(traced, buffer)
            return buffer.getvalue()
    except Exception as failed:  # noqa: BLE001
        raise _layer_error("torchscript", wrapped, sample, attempt, failed) from None


def _batch_dim(args) -> tuple:
    return tuple({0: torch.export.Dim("batch")} if isinstance(a, torch.Tensor) else None for a in args)


@contextlib.contextmanager
def _quiet_exporter():
    """torch.export logs hints at WARNING level and its internals warn; the command reports success or the
    failing layer itself."""
    loggers = [logging.getLogger(n) for n in ("torch.export", "torch._export", "torch.onnx",
                                              "torch.fx.experimental.symbolic_shapes")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


# ---- naming the layer an export fails in ----------------------------------------------------------------------
def _layer_error(fmt: str, wrapped: nn.Module, sample: torch.Tensor, attempt, failed: Exception) -> ConfigError:
    """The exporter's error as one line, with the layer (module path, class) whose export alone fails too:
    the inputs every submodule sees are recorded in one eager pass, then submodules are exported one by one,
    descending into the first that fails."""
    reason = _first_line(failed)
    try:
        found = _failing_layer(wrapped, sample, attempt)
    except Exception:  # noqa: BLE001 (the search is a courtesy: the exporter's message stands on its own)
        found = None
    if found is None:
        where = "the model"
    else:
        name, module, error = found
        where = f"layer '{name}' ({type(module).__name__})"
        reason = _first_line(error)
    return ConfigError(f"--format={fmt}: {where} cannot be exported: {reason}")


def _failing_layer(wrapped: nn.Module, sample: torch.Tensor, attempt):
    inputs: dict[nn.Module, tuple] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args: inputs.setdefault(mod, args))
             for m in wrapped.model.modules()]
    try:
        with torch.no_grad():
            wrapped(sample)
    finally:
        for hook in hooks:
            hook.remove()
    found = None
    module, prefix = wrapped.model, ""
    while True:
        for name, child in module.named_children():
            args = inputs.get(child)
            if args is None or not all(isinstance(a, torch.Tensor) for a in args):
                continue
            try:
                with _quiet_exporter(), torch.no_grad():
                    attempt(child, args)
            except Exception as error:  # noqa: BLE001
                found = (f"{prefix}{name}", child, error)
                break
        else:
            return found
        module, prefix = found[1], f"{found[0]}."


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    for marker in ("The following call raised this error:",):  # torch.export: the user code that failed
        if marker in text:
            rest = [r.strip() for r in text.split(marker, 1)[1].splitlines() if r.strip()]
            line += f" (at {' '.join(rest[:2])})" if rest else ""
    return line


# ---- description and check ------------------------------------------------------------------------------------
def _description(info: DataInfo, fmt: str, out: Path, meta: dict) -> dict:
    h, w = info.input_size
    channels = int(info.in_channels)
    return {
        "format": fmt,
        "file": out.name,
        "classes": [str(c) for c in info.classes],
        "num_classes": int(info.num_classes),
        "input": {
            "name": INPUT_NAME, "shape": ["batch", channels, int(h), int(w)], "dtype": "float32",
            "layout": "NCHW", "range": [0.0, 1.0], "channels": channels, "size": [int(h), int(w)],
            "color": {1: "grey", 3: "RGB"}.get(channels, f"{channels} channels"),
            "convention": ("pixel values / 255 (float32 in [0, 1]); the normalisation (x - mean) / std is part "
                           "of the model, do not apply it again"),
        },
        "output": {"name": OUTPUT_NAME, "shape": ["batch", int(info.num_classes)],
                   "meaning": "logits, in the order of classes; softmax gives the probabilities"},
        "normalisation_folded_in": {"mean": [float(m) for m in info.mean], "std": [float(s) for s in info.std]},
        **meta,
        "cnnlab_version": __version__,
        "torch_version": torch.__version__,
    }


def load_exported(fmt: str, path: Path | bytes):
    """A callable float32 tensor -> logits tensor for an exported file (or its bytes), using only its runtime."""
    source = io.BytesIO(path) if isinstance(path, bytes) else str(path)
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch marks torch.jit deprecated
            model = torch.jit.load(source)
        return lambda x: model(x)
    if fmt == "exported":
        model = torch.export.load(source).module()
        return lambda x: model(x)
    import onnxruntime  # the ONNX runtime: an optional dependency (cnnlab[export]), needed only here

    session = onnxruntime.InferenceSession(path if isinstance(path, bytes) else str(path),
                                           providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {INPUT_NAME: x.numpy()})[0])


def _check(wrapped: nn.Module, fmt: str, out: Path | bytes, info: DataInfo) -> float | None:
    """Largest |logit difference| of the file (or its bytes) against the PyTorch model on 3 random images (another
    batch size than the traced one); None when onnxruntime is missing for an ONNX file."""
    if fmt == "onnx" and importlib.util.find_spec("onnxruntime") is None:
        log.warning("onnxruntime is not installed: the ONNX file was not run (pip install 'cnnlab[export]')")
        return None
    h, w = info.input_size
    x = torch.rand(3, info.in_channels, h, w, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = wrapped(x)
        got = load_exported(fmt, out)(x)
    diff = float((got.float() - expected.float()).abs().max())
    if diff > CHECK_TOLERANCE:
        log.warning("the exported model's logits differ from the PyTorch model's by up to %.3g", diff)
    return diff
