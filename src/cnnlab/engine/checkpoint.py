"""Checkpoints: atomic writes, safe loads, and finding the checkpoint a user points at."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pickle
import zipfile
from pathlib import Path

import torch
from omegaconf import OmegaConf

from cnnlab.config.compose import literal
from cnnlab.config.migrate import checkpoint_config
from cnnlab.errors import ConfigError
from cnnlab.util.outpaths import write_bytes_atomic

log = logging.getLogger("cnnlab")

FORMAT_VERSION = 1
CKPT_DIR = "checkpoints"
# With averaged weights (trainer.ema / trainer.swa) a checkpoint's "model" holds the averaged weights, which
# validation measured and eval, predict and fine-tuning use; the training weights resume continues from are here.
RAW_WEIGHTS = "raw_model"


def save_atomic(obj: dict, path: Path) -> None:
    """Serialise and write atomically: a reader sees the old file or the complete new one, never a torn one."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes_atomic(buffer.getvalue(), Path(path))


def link_atomic(source: Path, target: Path) -> None:
    """Make `target` a second name for the complete file `source` (best.ckpt and last.ckpt of the same epoch).

    Saves writing and syncing the same bytes twice. The next atomic write to either name renames a new file
    over it, so the two names part again without either being torn. Falls back to a copy where hard links
    are not supported.
    """
    tmp = target.with_name(f".{target.name}.link.tmp")
    try:
        if tmp.exists():
            tmp.unlink()
        os.link(source, tmp)
        os.replace(tmp, target)
    except OSError:
        write_bytes_atomic(Path(source).read_bytes(), target)


# Which checkpoint of a run dir each purpose takes, in order of preference (see find_checkpoint).
CHECKPOINT_CHOICE = {
    "resume": ("last.ckpt", "best.ckpt"),   # trainer.resume: the newest training state
    "weights": ("best.ckpt", "last.ckpt"),  # cnnlab-eval, cnnlab-predict, finetune.checkpoint: the best weights
}


def find_checkpoint(path: str | os.PathLike, key: str, purpose: str = "weights") -> tuple[Path, dict]:
    """The checkpoint that `key=path` points at, and its contents (read by `load_checkpoint`).

    Every command answers "which checkpoint in this directory" here:
    - a file is that file; one that cannot be read is an error;
    - a run dir is looked into: its checkpoints/ folder, or the directory itself when it has none (a
      checkpoints/ folder given directly). What is taken there depends on `purpose`:
      - "weights" (cnnlab-eval, cnnlab-predict, finetune.checkpoint): best.ckpt, else last.ckpt;
      - "resume" (trainer.resume): the newest training state: last.ckpt, or best.ckpt when that one is
        further into training (epoch, then batches into a partial epoch);
      either way a file that cannot be read (empty, cut short, altered) is passed over with a warning that
      names it and says why, and the error lists what was looked for when nothing readable is left.
    """
    if purpose not in CHECKPOINT_CHOICE:
        raise ValueError(f"purpose={purpose!r}: one of {', '.join(CHECKPOINT_CHOICE)}")
    from cnnlab.util.outpaths import file_kind

    where = Path(path).expanduser()
    kind = file_kind(where)  # stat() only: a FIFO is named, never opened (reading it would wait forever)
    if kind == "file":
        return where, load_checkpoint(where)
    if kind == "missing":
        raise ConfigError(f"{key}={path}: no such file or directory")
    if kind != "dir":
        raise ConfigError(f"{key}={path} is {kind}, not a checkpoint file or a run dir; give a .ckpt file or "
                          f"the run dir that holds checkpoints/")
    folder = where / CKPT_DIR if (where / CKPT_DIR).is_dir() else where
    candidates = [folder / name for name in CHECKPOINT_CHOICE[purpose]]
    readable, skipped = [], []
    for candidate in candidates:
        if not candidate.is_file():
            continue
        try:
            readable.append((candidate, load_checkpoint(candidate)))
        except ConfigError as bad:
            skipped.append(f"{candidate.name} ({bad})")
            log.warning("passing over unreadable checkpoint %s", skipped[-1])
            continue
        if purpose == "weights":
            break
    if not readable and not skipped:
        raise ConfigError(f"{key}={path}: no checkpoint in that directory (looked for "
                          f"{', '.join(str(c) for c in candidates)})")
    if not readable:
        raise ConfigError(f"{key}={path}: no readable checkpoint in that directory: {'; '.join(skipped)}")
    if purpose == "resume":  # max() keeps the first of equals: last.ckpt
        return max(readable, key=lambda found: _progress(found[1]))
    return readable[0]


def _progress(ckpt: dict) -> tuple[int, int]:
    """How far into training a checkpoint is: (epoch, batches done of a partial next epoch)."""
    partial = ckpt.get("partial") or {}
    return int(ckpt.get("epoch", 0)), int(partial.get("loader", {}).get("batches", 0)) if partial else 0


def unreadable_reason(bad: BaseException) -> str:
    """One line saying why torch.load failed, whatever the exception's text (an empty EOFError included).

    torch's own advice to retry with weights_only=False is never passed on: that would run the file's code.
    """
    if isinstance(bad, EOFError):
        return "the file is empty or cut short"
    if isinstance(bad, pickle.UnpicklingError) and "weights_only" in str(bad).lower():
        return "it holds objects other than tensors and plain containers (refused: loading them could run code)"
    if isinstance(bad, zipfile.BadZipFile) or "PytorchStreamReader" in str(bad):
        return "it is not a complete torch file (damaged or cut short)"
    lines = [line.strip() for line in str(bad).splitlines()
             if line.strip() and "weights_only" not in line and "trust" not in line]
    return f"{type(bad).__name__}: {lines[0]}" if lines else type(bad).__name__


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """Load with weights_only=True: tensors and plain containers only, never arbitrary pickled objects.

    The result is checked for the shape cnnlab writes: a dict of weights, a config mapping with a model
    name, a known format version and the config's hash (a config edited or damaged after writing is refused).
    """
    from cnnlab.util.outpaths import input_file

    input_file(path, f"checkpoint {path}")  # a FIFO or device is named, never opened
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as bad:
        raise ConfigError(f"{path} is not a readable cnnlab checkpoint: {unreadable_reason(bad)}") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise ConfigError(f"{path} is not a cnnlab checkpoint (no model weights and config inside)")
    if not isinstance(ckpt["model"], dict):
        raise ConfigError(f"{path} is not a cnnlab checkpoint: its model weights are "
                          f"{type(ckpt['model']).__name__}, not a mapping of tensors")
    config = ckpt["config"]
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        what = type(config).__name__ if not isinstance(config, dict) else f"model: {config.get('model')!r}"
        raise ConfigError(f"{path} is not a cnnlab checkpoint: its config ({what}) is not a mapping with a "
                          f"model section")
    version = ckpt.get("format_version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ConfigError(f"{path} has checkpoint format {version!r}, newer than this cnnlab reads "
                          f"(up to {FORMAT_VERSION}); upgrade cnnlab to use it")
    stored = ckpt.get("config_hash")
    if stored is None:
        raise ConfigError(f"{path}: the checkpoint has no config_hash, so its config cannot be checked; every "
                          f"checkpoint cnnlab writes carries one: the file was altered")
    if stored != config_hash(config):
        raise ConfigError(f"{path}: the config stored in the checkpoint does not match its hash; the file was "
                          f"altered or damaged")
    return ckpt


def saved_config(ckpt: dict, source: str = "the checkpoint"):
    """The checkpoint's config, brought to the current keys (`config.migrate`), as a DictConfig whose values are
    data, never expressions. `source` names the file in the refusal of a config newer than this cnnlab.

    cnnlab stores configs resolved, so a `${...}` in one is either a literal the user escaped or something
    crafted (`${oc.env:...}` would copy the environment into the new run, `${oc.create:...}` would build a
    `_target_` the trust check never saw). Every such string is escaped: it stays the literal text.
    The trust and the downloads the trainer allowed (model.trust_repo, data.download) are turned off.
    """
    cfg = OmegaConf.create(literal(checkpoint_config(ckpt, source)))
    if OmegaConf.is_dict(cfg.get("model")) and "trust_repo" in cfg.model:
        cfg.model.trust_repo = False  # model=hub: the trainer's trust; restore.check_trusted_code asks this command's
    if OmegaConf.is_dict(cfg.get("data")) and cfg.data.get("download") is not None:
        # a file never makes cnnlab reach the network or create folders: only this command line turns it on
        # (restore.check_download)
        cfg.data.download = False
    return cfg


def config_hash(config: dict) -> str:
    """A stable fingerprint of a resolved config (sorted-key JSON, SHA-256)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def check_channels(ckpt: dict, path, in_channels: int | None, key: str = "checkpoint") -> None:
    """A model trained on C-channel images cannot take another channel count: say so in those terms."""
    saved = (ckpt.get("config") or {}).get("data", {}).get("in_channels")
    if in_channels is not None and saved is not None and int(saved) != int(in_channels):
        raise ConfigError(f"{key}={path} holds a model for {saved}-channel images, but the data gives "
                          f"{in_channels}-channel images (data.in_channels={in_channels}); use data with "
                          f"{saved} channel(s), or for an image folder set data.in_channels={saved}")


def training_weights_key(ckpt: dict) -> str:
    """Where a checkpoint keeps the weights training continues from: RAW_WEIGHTS when it holds averaged ones."""
    return RAW_WEIGHTS if RAW_WEIGHTS in ckpt else "model"


def non_finite_problem(state: dict, source: str) -> str | None:
    """The line refusing weights that hold NaN or infinity (None when all are finite): `source` names the file,
    the line names the first such tensor. A model with them only predicts NaN, and training from them 'diverges'
    at the first step, far from the file that caused it."""
    for name, tensor in state.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all():
            what = "NaN" if torch.isnan(tensor).any() else "infinity"
            bad = sum(1 for t in state.values() if isinstance(t, torch.Tensor) and t.is_floating_point()
                      and not torch.isfinite(t).all())
            return (f"{source} holds weights that are not finite numbers: tensor {name!r} holds {what}"
                    f"{f' ({bad - 1} more tensors hold NaN or infinity)' if bad > 1 else ''}; the run that wrote it "
                    f"had diverged: use an earlier checkpoint or weights file")
    return None


def check_finite(state: dict, source: str) -> None:
    problem = non_finite_problem(state, source)
    if problem:
        raise ConfigError(problem)


def check_source(ckpt: dict, state: dict, path, expected_model: str, in_channels: int | None, source: str,
                 remedy: str, channels_key: str = "checkpoint") -> None:
    """The checks before a checkpoint's weights (`state`) go into a model, in the order users meet them: channel
    count, architecture (model.name; `remedy` may name the saved one as {saved}), finite weights. `source` names
    the file in the messages."""
    check_channels(ckpt, path, in_channels, channels_key)
    saved = ckpt["config"].get("model", {}).get("name")
    if saved != expected_model:
        raise ConfigError(f"{source} holds a {saved!r} model, but the config builds "
                          f"model.name={expected_model!r}; {remedy.format(saved=saved)}")
    check_finite(state, source)


def load_model_weights(model: torch.nn.Module, ckpt: dict, path: Path, expected_model: str,
                       in_channels: int | None = None, key: str = "model") -> None:
    """Load weights, explaining an architecture mismatch in terms of model names rather than tensor keys.

    key: which weights: "model" (the validated ones), or RAW_WEIGHTS (resume: the training weights)."""
    check_source(ckpt, ckpt[key], path, expected_model, in_channels, f"checkpoint {path}",
                 "use a checkpoint of the same architecture")
    try:
        model.load_state_dict(ckpt[key])
    except RuntimeError as bad:
        first = str(bad).split("\n")[1].strip() if "\n" in str(bad) else str(bad)
        raise ConfigError(f"checkpoint {path} does not fit the configured {expected_model!r} model "
                          f"(different sizes or classes?): {first}") from None
