"""The architecture inspector's report of a configured model, before any training: the work of `cnnlab-summary`
(cnnlab.cli.summary) and of the Python API's cnnlab.summary. The model is built on the meta device and the data
set is never loaded: its shape comes from the data config."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from cnnlab.config.compose import config_dir
from cnnlab.config.schema import SummaryConfig
from cnnlab.data.build import data_info, discovered_classes
from cnnlab.errors import ConfigError
from cnnlab.engine.freezing import Freezer
from cnnlab.models.inspector.summarize import summarize
from cnnlab.models import build_model
from cnnlab.util.outpaths import check_target, read_text, write_atomic
from cnnlab.run.validate import validate


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def summary_input(cfg: SummaryConfig) -> tuple[tuple[int, int, int], int]:
    """((C, H, W), classes) to inspect: the data section's, with the summary's input_size / num_classes on top.
    `cfg`: the validated summary config (cnnlab.run.validate.validate(cfg, "summary"))."""

    data = cfg.data
    found = None if cfg.num_classes is not None else discovered_classes(data)
    if found is not None:  # an image folder or shard set: its folders or manifest name the classes
        data = data.model_copy(update={"classes": found})
    info = data_info(data)  # reads the data config only; no images are loaded
    channels, size, classes = info.in_channels, tuple(info.input_size), info.num_classes
    override = cfg.input_size
    if override is not None:
        values = list(override) if isinstance(override, list) else [override]
        if not (len(values) in (1, 2, 3) and all(_positive_int(v) for v in values)):
            raise ConfigError(f"input_size={override!r}"
                              " must be N (a square N x N input), [H, W] or [C, H, W] with positive integers")
        if len(values) == 3:
            channels, size = values[0], tuple(values[1:])
        else:
            size = (values[0], values[0]) if len(values) == 1 else tuple(values)
    if cfg.num_classes is not None:  # a positive integer: the schema checked it
        classes = int(cfg.num_classes)
    return (int(channels), int(size[0]), int(size[1])), classes


def model_label(cfg: DictConfig) -> str:
    """The name the user picked: the model config (e.g. convnet_exercise), with model.name if it differs."""
    name = str(cfg.model.name)
    try:
        choice = HydraConfig.get().runtime.choices.get("model") if HydraConfig.initialized() else None
    except ValueError:
        choice = None
    return name if choice in (None, name) else f"{choice} (model.name={name})"


def summary_is_ours(path: Path) -> bool:
    """Whether `path` holds a summary this command wrote (either format)."""
    text = read_text(path)
    if text is None:
        return False
    if re.match(r"[^\n]* on a \d+x\d+x\d+ input", text):
        return True
    try:
        data = json.loads(text)
    except ValueError:
        return False
    return isinstance(data, dict) and {"input_shape", "layers", "totals"} <= data.keys()


def build_summary(cfg: DictConfig):
    """Build the configured model on the meta device, freeze what finetune.freeze names, and inspect it."""
    typed = validate(cfg, "summary")
    fmt = typed.format
    if cfg.output and Path(str(cfg.output)).expanduser().is_dir():
        raise ConfigError(f"output={cfg.output} is a directory; give a file name, e.g. "
                          f"output={Path(str(cfg.output)) / ('summary.json' if fmt == 'json' else 'summary.txt')}")
    if cfg.output:
        check_target(Path(str(cfg.output)), f"output={cfg.output}", "cnnlab-summary", summary_is_ours,
                     "it is not a summary cnnlab-summary wrote")
    shape, classes = summary_input(typed)
    model_cfg = OmegaConf.create(OmegaConf.to_container(cfg.model, resolve=True))
    notes = []
    # Pretrained weights change no shape; loading them would need the file (or the network) for nothing, so the
    # model is built as for a checkpoint's weights (pretrained=False: the architecture the weights imply).
    if model_cfg.get("weights"):
        notes.append(f"model.weights={cfg.model.weights} is not loaded: weights do not change the architecture")
    if model_cfg.get("pretrained") is True:
        notes.append("model.pretrained=true is not loaded: weights do not change the architecture")
    with torch.device("meta"):  # shapes only: no memory, no initialisation arithmetic
        model = build_model(model_cfg, shape[0], classes, shape[1:], pretrained=False, checked=True)
    freeze = typed.finetune.freeze if typed.finetune is not None else "none"
    if freeze not in (None, "none"):
        Freezer(model, freeze, classes).freeze()
    summary = summarize(model, shape, name=model_label(cfg))
    summary.notes = notes + summary.notes
    return summary


def render(summary, fmt: str) -> str:
    return summary.json() if fmt == "json" else summary.table()


def summarize_config(cfg: DictConfig):
    """Build the summary and write it (table or JSON) to cfg.output if set; returns (summary, its text)."""
    summary = build_summary(cfg)
    text = render(summary, cfg.format)
    if cfg.output:
        write_atomic(Path(str(cfg.output)).expanduser(), text + "\n")
    return summary, text


def run_summary(cfg: DictConfig) -> str:
    """Print the summary (table or JSON) and write it to cfg.output if set; returns the text."""
    summary, text = summarize_config(cfg)
    print(text, flush=True)
    return text


def check_group_choices(args: list[str]) -> None:
    """An unknown `group=option` (model=resnet19) is a ConfigError listing the options, before Hydra starts."""
    root = config_dir()
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or "," in value or not (root / key).is_dir() or key == "hydra" or value in ("null", ""):
            continue
        options = sorted(p.stem for p in (root / key).glob("*.yaml"))
        if value not in options:
            what = "in the zoo" if key == "model" else "an option of " + key
            raise ConfigError(f"{key}={value} is not {what}; choose one of {', '.join(options)}")
