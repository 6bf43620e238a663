"""TensorBoard output for one run: scalars, the learning-curves layout, histograms, image grids, confusion
matrix, the Projector's embedding, hparams."""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from cnnlab.engine.images import confusion_image, grid
from cnnlab.engine.projector import Features

log = logging.getLogger(__name__)


def _names_event_file(method):
    """An OSError while writing (e.g. a full disk, raised by the writer thread on the next call) names the file."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except OSError as bad:
            bad.filename = bad.filename or f"{self.run_dir}/events.out.tfevents.* (TensorBoard event file)"
            raise

    return wrapper


# The Custom Scalars tab: train and val on one chart, so over-fitting (val leaving train) shows at a glance.
# Tags are regular expressions there, anchored so that train/loss does not also pick up train/loss_step.
LEARNING_CURVES = {"Learning curves": {
    "loss: train vs val": ["Multiline", ["^train/loss$", "^val/loss$"]],
    "accuracy: train vs val": ["Multiline", ["^train/acc$", "^val/acc$"]],
}}
EMBEDDING_TAG = "test_features"  # also the folder name under <run dir>/<step>/ (a slash would be %2F there)


def first_conv(model: nn.Module) -> nn.Conv2d | None:
    return next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)


class TensorBoardLogger:
    """Writes one event file into the run dir; each method is a no-op when logging is disabled."""

    def __init__(self, cfg, run_dir: Path):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.writer = None
        if cfg.enabled:
            from torch.utils.tensorboard import SummaryWriter  # ~0.3 s to import: only when logging is on

            self.writer = SummaryWriter(log_dir=str(run_dir), flush_secs=int(cfg.flush_secs))

    @property
    def enabled(self) -> bool:
        return self.writer is not None

    def graph(self, model: nn.Module, example: torch.Tensor) -> None:
        """The model's graph for the Graphs tab, traced once (torch.jit.trace) on `example` in eval mode.

        Some models cannot be traced (data-dependent control flow, outputs that are not tensors): that costs
        a one-line warning, never the run. logger.graph=false skips it.
        """
        if self.writer is None or not self.cfg.graph:
            return
        modes = {m: m.training for m in model.modules()}
        model.eval()  # no batch-norm statistics change, no dropout, no auxiliary heads
        try:
            # Tracer warnings and add_graph's own printout on failure would only repeat the warning below.
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
                warnings.simplefilter("ignore")
                self.writer.add_graph(model, example)
        except Exception as bad:  # noqa: BLE001 - any tracing failure leaves the run as it was
            message = str(bad).strip().splitlines()
            log.warning("model graph not added to TensorBoard (%s: %s)", type(bad).__name__,
                        message[0] if message else "")
        finally:
            for module, mode in modes.items():
                module.training = mode

    @_names_event_file
    def learning_curves(self) -> None:
        """The Custom Scalars layout (LEARNING_CURVES); written at every fit start, the last one read wins."""
        if self.writer is not None:
            self.writer.add_custom_scalars(LEARNING_CURVES)

    @_names_event_file
    def scalars(self, metrics: dict, step: int) -> None:
        if self.writer is None:
            return
        for key, value in metrics.items():
            if isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, step)

    def wants_histograms(self, epoch: int) -> bool:
        every = int(self.cfg.histogram_every_n_epochs)
        return self.writer is not None and every > 0 and epoch % every == 0

    @_names_event_file
    def histograms(self, model: nn.Module, step: int) -> None:
        """Weights and the last step's gradients, per parameter, plus each layer's gradient L2 norm."""
        for name, param in model.named_parameters():
            self.writer.add_histogram(f"weights/{name}", param.detach().float().cpu(), step)
            if param.grad is not None:
                grad = param.grad.detach().float()
                self.writer.add_histogram(f"grads/{name}", grad.cpu(), step)
                self.writer.add_scalar(f"grad_norm/{name}", float(grad.norm()), step)

    @_names_event_file
    def input_batch(self, images: torch.Tensor, mean, std, step: int, tag: str = "inputs/train_batch") -> None:
        """A grid of (augmented) training inputs, un-normalised so they look like the data."""
        if self.writer is None or not self.cfg.images:
            return
        x = images[:64].detach().float().cpu()
        mean_t = torch.tensor(list(mean)).view(1, -1, 1, 1)
        std_t = torch.tensor(list(std)).view(1, -1, 1, 1)
        self.writer.add_image(tag, grid(x * std_t + mean_t), step)

    @_names_event_file
    def filters(self, model: nn.Module, step: int) -> None:
        if self.writer is None or not self.cfg.images:
            return
        conv = first_conv(model)
        if conv is None:
            return
        self.writer.add_image("filters/first_conv", grid(conv.weight, normalize_each=True, pad=1), step)

    @_names_event_file
    def confusion(self, confusion: torch.Tensor, classes, step: int, tag: str = "test/confusion_matrix") -> None:
        if self.writer is None or not self.cfg.images:
            return
        self.writer.add_image(tag, confusion_image(confusion), step)
        header = "| true \\ pred | " + " | ".join(classes) + " |\n|" + "---|" * (len(classes) + 1) + "\n"
        rows = "".join(f"| {c} | " + " | ".join(str(int(v)) for v in row) + " |\n"
                       for c, row in zip(classes, confusion.tolist()))
        self.writer.add_text(tag, header + rows, step)

    @_names_event_file
    def per_class_scores(self, report: dict, classes, step: int, tag: str = "test/per_class") -> None:
        """Per-class precision, recall, F1 and support as a table in the Text tab (`metrics.precision_recall_f1`;
        n/a: a class with neither samples nor predictions)."""
        if self.writer is None:
            return
        cell = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
        rows = "".join(f"| {c} | {cell(p)} | {cell(r)} | {cell(f)} | {n} |\n" for c, p, r, f, n in
                       zip(classes, report["precision"], report["recall"], report["f1"], report["support"]))
        self.writer.add_text(tag, "| class | precision | recall | F1 | support |\n|---|---|---|---|---|\n" + rows, step)

    @property
    def projector_samples(self) -> int:
        """How many test images go to the Projector tab; 0 when logger.projector is off."""
        if self.writer is None or not self.cfg.projector:
            return 0
        return int(self.cfg.projector_max_samples)

    @_names_event_file
    def embedding(self, rows: Features, classes, mean, std, step: int) -> None:
        """The Projector's points: features, a metadata table (label, predicted, correct) and a sprite of the
        images, un-normalised so they look like the data."""
        if self.writer is None:
            return
        names = [str(c).replace("\t", " ").replace("\n", " ") for c in classes]  # TSV cells
        metadata = [[names[t], names[p], "yes" if t == p else "no"]
                    for t, p in zip(rows.labels.tolist(), rows.predicted.tolist())]
        images = rows.thumbnails
        mean_t = torch.tensor(list(mean)).view(1, -1, 1, 1)
        std_t = torch.tensor(list(std)).view(1, -1, 1, 1)
        images = (images * std_t + mean_t).clamp(0, 1)
        if images.shape[1] not in (1, 3):
            images = images[:, :1]
        self.writer.add_embedding(rows.features, metadata=metadata, metadata_header=["label", "predicted", "correct"],
                                  label_img=images, global_step=step, tag=EMBEDDING_TAG)

    @_names_event_file
    def hparams(self, hparams: dict, metrics: dict) -> None:
        """HParams-tab entry in this run's own event file (add_hparams would start a separate sub-run)."""
        if self.writer is None or not self.cfg.hparams:
            return
        from torch.utils.tensorboard.summary import hparams as hparams_summary  # as SummaryWriter, above

        metric_dict = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        experiment, session_start, session_end = hparams_summary(hparams, metric_dict)
        file_writer = self.writer.file_writer  # created with the SummaryWriter, open until close()
        for summary in (experiment, session_start, session_end):
            file_writer.add_summary(summary)

    @_names_event_file
    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None
