"""Pictures of what a trained network learned (filters, feature maps, Grad-CAM, the most confident mistakes), written
as PNG files and into the run's TensorBoard event files: the work of `cnnlab-explain` (cnnlab.cli.explain, which
describes the pictures and the files) and of the Python API's Run.explain."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from cnnlab.data import build_data
from cnnlab.data.loaders import Normalize
from cnnlab.engine.devices import resolve_device
from cnnlab.engine.checkpoint import CKPT_DIR, find_checkpoint
from cnnlab.errors import ConfigError
from cnnlab.data.image_input import image_files, load_image
from cnnlab.run.weights import load_trained_model
from cnnlab.util.outpaths import PNG_SOFTWARE, check_folder, check_target, png_software, write_error
from cnnlab.visualize.feature_maps import capture, feature_maps_figure
from cnnlab.visualize.figures import denormalize, save_png
from cnnlab.visualize.filters import filters_figure
from cnnlab.visualize.gradcam import gradcam_figure, gradcam_maps
from cnnlab.visualize.layer_probe import (conv_layers, default_gradcam_layer, find_conv_layer, find_spatial_layer,
                                     probe_layers, spread)
from cnnlab.visualize.mistakes import ConfidentMistakes, mistakes_figure

DEFAULT_IMAGES = 8      # test images explained when no files are given
MAX_IMAGES = 64         # more would not fit a readable figure
FEATURE_LAYERS = 3      # conv layers shown by default: first, middle, last
MISTAKES = 16           # panels of the most confidently wrong grid
TENSORBOARD_PREFIX = "explain/"
EVENTS_SUFFIX = ".explain"  # names this command's event files, so a new explain replaces the last one's pictures

log = logging.getLogger("cnnlab")


@dataclass
class Explained:
    out_dir: Path
    files: list[Path]
    epoch: int


@dataclass
class ImagesToExplain:
    inputs: torch.Tensor             # normalised, on the device
    labels: list[str]                # a short caption per image: its file name or its test label
    true: list[str | None]           # the true class name, None for the user's own files


def explain(run_dir: str, images: list[str] | None = None, layers: list[str] | None = None,
            gradcam_layer: str | None = None, n_images: int = DEFAULT_IMAGES, out: str | None = None,
            device: str = "auto", trusted_repos: tuple[str, ...] = ()) -> Explained:
    if not 1 <= n_images <= MAX_IMAGES:
        raise ConfigError(f"--images={n_images} must be between 1 and {MAX_IMAGES}")
    files = image_files(images) if images else []
    if len(files) > MAX_IMAGES:
        raise ConfigError(f"{len(files)} image files given: at most {MAX_IMAGES} fit the pictures; name fewer")
    target = resolve_device(device, key="--device")
    path, ckpt = find_checkpoint(run_dir, "run_dir")
    run_root = path.parent.parent if path.parent.name == CKPT_DIR else path.parent
    out_dir = Path(out).expanduser() if out else run_root / "explain"
    out_key = (f"--out={out}" if out else
               f"run_dir={run_dir} (the pictures go to {out_dir}; --out DIR puts them elsewhere)")
    check_folder(out_dir, out_key)
    tensorboard = _run_dir_writable(run_root, out)
    loaded = load_trained_model(path, target, ckpt=ckpt, trusted_repos=trusted_repos)
    model, info = loaded.model, loaded.info

    # Every name is checked on one blank image before any data is built.
    probe = probe_layers(model, info.in_channels, info.input_size, target)
    if not conv_layers(probe):
        raise ConfigError(f"model {loaded.cfg.model.name} has no conv layers: there are no filters, feature maps "
                          f"or Grad-CAM maps to draw")
    if layers:
        filter_layers = feature_layers = [find_conv_layer(probe, name) for name in dict.fromkeys(layers)]
    else:
        filter_layers, feature_layers = conv_layers(probe)[:1], spread(conv_layers(probe), FEATURE_LAYERS)
    cam_layer = find_spatial_layer(probe, gradcam_layer) if gradcam_layer else default_gradcam_layer(probe)
    names = ([f"filters_{r.name}.png" for r in filter_layers] + [f"feature_maps_{r.name}.png" for r in feature_layers]
             + ["gradcam.png", "mistakes.png"])
    for name in names:  # before any data is built: a file that is not an earlier picture of cnnlab's stays
        check_target(out_dir / name, out_key, "cnnlab-explain", lambda p: _own_picture(p, out is None),
                     "it is not a picture cnnlab wrote")
    normalize = Normalize(info.mean, info.std, target)
    mode = loaded.data.image_resize_mode()
    user = [load_image(p, info.in_channels, info.input_size, mode) for p in files]

    data = build_data(loaded.data, int(loaded.cfg.seed), target, train_augment=False)
    mistakes, samples, total = _scan_test_split(model, data.test, MISTAKES, n_images, info.classes)
    if user:
        chosen = ImagesToExplain(normalize(torch.stack(user).to(target).float()), [p.name for p in files],
                                 [None] * len(files))
    else:
        chosen = samples

    shown = denormalize(chosen.inputs, info.mean, info.std)
    written = []
    for record in filter_layers:
        written.append(save_png(filters_figure(record.module, record.title, f"epoch {loaded.epoch}, "),
                                out_dir / f"filters_{record.name}.png"))
    maps = capture(model, {r.name: r.module for r in feature_layers}, chosen.inputs)
    for record in feature_layers:
        written.append(save_png(feature_maps_figure(record.title, maps[record.name], shown, chosen.labels),
                                out_dir / f"feature_maps_{record.name}.png"))
    with torch.no_grad():
        probs = model(chosen.inputs).float().softmax(dim=1).cpu()
    confidence, predicted = probs.max(dim=1)
    heat = gradcam_maps(model, cam_layer.module, chosen.inputs, predicted.to(target))
    written.append(save_png(gradcam_figure(cam_layer.title, shown, heat, chosen.true,
                                           [info.classes[i] for i in predicted.tolist()], confidence.tolist()),
                            out_dir / "gradcam.png"))
    wrong_images = (denormalize(mistakes.images, info.mean, info.std) if len(mistakes.true)
                    else torch.empty(0, info.in_channels, *info.input_size))
    written.append(save_png(mistakes_figure(wrong_images, [info.classes[i] for i in mistakes.true.tolist()],
                                            [info.classes[i] for i in mistakes.predicted.tolist()],
                                            mistakes.confidence.tolist(), mistakes.wrong, total),
                            out_dir / "mistakes.png"))
    if tensorboard:
        _to_tensorboard(written, run_root, loaded.epoch)
    return Explained(out_dir, written, loaded.epoch)


def _scan_test_split(model, loader, k_mistakes: int, n_samples: int, classes) -> tuple:
    """One pass over the test split: the most confidently wrong images, and n_samples images taken one class
    after another (so a few images show several classes)."""
    mistakes = ConfidentMistakes(k_mistakes)
    per_class: dict[int, list[torch.Tensor]] = {}
    total = 0
    with torch.inference_mode():
        for inputs, labels in loader:
            probs = model(inputs).float().softmax(dim=1)
            mistakes.update(inputs, labels, probs)
            total += len(labels)
            for x, y in zip(inputs, labels.tolist()):
                if len(per_class.setdefault(y, [])) < n_samples:
                    per_class[y].append(x.clone())
    picks = []
    for rank in range(n_samples):  # round-robin over the classes in label order
        picks += [(y, per_class[y][rank]) for y in sorted(per_class) if rank < len(per_class[y])]
    picks = picks[:n_samples]
    samples = ImagesToExplain(torch.stack([x for _, x in picks]), [f"test: {classes[y]}" for y, _ in picks],
                              [classes[y] for y, _ in picks])
    return mistakes, samples, total


def _own_picture(path: Path, default_dir: bool) -> bool:
    """A PNG with cnnlab's mark; in RUN_DIR/explain (this command's own folder) also a matplotlib PNG written
    before pictures carried the mark."""
    software = png_software(path)
    return software == PNG_SOFTWARE or (default_dir and (software or "").startswith("Matplotlib"))


def _run_dir_writable(run_root: Path, out: str | None) -> bool:
    """Whether the TensorBoard copy can go into the run dir. Without --out the pictures go there too, so a run
    dir that cannot be written is an error; with --out elsewhere only the copy is skipped, with a warning."""
    try:
        check_folder(run_root, f"run_dir={run_root}")
    except ConfigError as bad:
        if not out:
            raise ConfigError(f"{bad} (or give --out DIR for the pictures; the TensorBoard copy is then "
                              f"skipped)") from None
        log.warning("the run dir %s cannot be written: the pictures are not added to its TensorBoard files",
                    run_root)
        return False
    return True


def _to_tensorboard(pngs: list[Path], run_root: Path, step: int) -> None:
    """The same pictures, pixel for pixel, in the run's TensorBoard event files (Images tab, explain/ tags)."""
    # Both imports cost about a second: only here, once the pictures are drawn.
    from matplotlib.image import imread
    from torch.utils.tensorboard import SummaryWriter

    events = run_root / f"events.out.tfevents.*{EVENTS_SUFFIX}"
    try:
        for old in run_root.glob(events.name):
            old.unlink()
        writer = SummaryWriter(log_dir=str(run_root), filename_suffix=EVENTS_SUFFIX)
        try:
            for png in pngs:
                writer.add_image(TENSORBOARD_PREFIX + png.stem, imread(png)[..., :3], step, dataformats="HWC")
        finally:
            writer.close()
    except OSError as bad:
        raise write_error(events, bad) from None
