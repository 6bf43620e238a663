"""`Run`: a cnnlab-train run dir seen from Python: its config, metrics and per-epoch history, learning curves,
and the commands that use a trained model (evaluate, predict, export), each by the command's own code."""

from __future__ import annotations

import csv
import functools
import html
import io
import json
from pathlib import Path

METRICS = "metrics.json"
HISTORY = "metrics.csv"


class Run:
    """One training run, by its directory. Every attribute reads the run's files when asked, so a Run of a run
    still in progress elsewhere, or one resumed since, shows what is on disk now."""

    def __init__(self, run_dir):
        self.dir = Path(run_dir).expanduser().resolve()

    # ---- what the run wrote -------------------------------------------------------------------------------
    @property
    def config(self):
        """The run's config (an OmegaConf DictConfig): config_resolved.yaml, written when training started, else
        the composed config of .hydra/config.yaml (a run stopped before its first step); None if neither exists."""
        from omegaconf import OmegaConf

        for name in ("config_resolved.yaml", ".hydra/config.yaml"):
            if (self.dir / name).is_file():
                return OmegaConf.load(self.dir / name)
        return None

    @property
    def metrics(self) -> dict:
        """metrics.json: the final metrics (test/acc, best_val/acc, ...); {} for a run that did not finish."""
        try:
            return json.loads((self.dir / METRICS).read_text())
        except FileNotFoundError:
            return {}

    @property
    def finished(self) -> bool:
        return (self.dir / METRICS).is_file()

    @property
    def status(self) -> str:
        """finished (metrics.json), failed (failure.json), stopped (a checkpoint to resume from) or started."""
        if self.finished:
            return "finished"
        if (self.dir / "failure.json").is_file():
            return "failed"
        if any((self.dir / "checkpoints").glob("*.ckpt")):
            return "stopped"
        return "started"

    def epoch_rows(self) -> list[dict]:
        """metrics.csv as one dict per epoch, numbers as numbers (`history` without pandas)."""
        try:
            with open(self.dir / HISTORY, newline="") as f:
                rows = list(csv.DictReader(f))
        except FileNotFoundError:
            return []
        return [{k: _number(v) for k, v in row.items()} for row in rows]

    @property
    def history(self):
        """The per-epoch table of metrics.csv (epoch, train/loss, train/acc, val/loss, val/acc, lr, ...): a pandas
        DataFrame when pandas is installed, else a list of dicts (one per epoch)."""
        rows = self.epoch_rows()
        try:
            import pandas as pd
        except ImportError:
            return rows
        return pd.DataFrame(rows)

    def summary(self) -> str:
        """The model summary the run wrote (model_summary.txt: layers, shapes, parameters); printed in a cell."""
        path = self.dir / "model_summary.txt"
        return _Text(path.read_text() if path.is_file() else f"no model summary in {self.dir} (trainer.summary=none)")

    # ---- pictures -----------------------------------------------------------------------------------------
    def plot(self, keys: tuple[str, ...] = ("loss", "acc")):
        """Learning curves: one panel per metric (train and val per epoch); a matplotlib Figure, which Jupyter
        shows inline (save it with fig.savefig)."""
        from matplotlib.ticker import MaxNLocator

        rows = self.epoch_rows()
        fig = figure(figsize=(5 * len(keys), 3.6))
        axes = fig.subplots(1, len(keys), squeeze=False)[0]
        for ax, key in zip(axes, keys):
            for split in ("train", "val"):
                points = [(r["epoch"], r[f"{split}/{key}"]) for r in rows
                          if isinstance(r.get(f"{split}/{key}"), (int, float))]
                if points:
                    ax.plot(*zip(*points), marker="o", label=f"{split}/{key}")
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel(key)
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend()
        fig.suptitle(f"{self._model()} on {self._data()}  ({self.dir.name})", fontsize=10)
        return fig

    # ---- the commands on a trained model ------------------------------------------------------------------
    def evaluate(self, split: str = "test", tta: str = "none", *overrides: str) -> dict:
        """Test the run's best checkpoint (else last) on a split, as `cnnlab-eval ckpt=<dir> split=.. tta=..`:
        the metrics, per-class scores and confusion matrix it writes to eval_metrics.json in its own dir
        (outputs/eval/...). tta: none | flip | five_crop | ten_crop; overrides as on that command line."""
        from cnnlab.api.eval_job import evaluate

        return evaluate(self.dir, split, tta, list(overrides))

    def predict(self, images, topk: int = 3, device: str = "auto") -> list[dict]:
        """Classify images as `cnnlab-predict <dir> <images>`: a file, a directory (every image under it), an image
        in memory (a PIL image, a uint8 array H x W or H x W x C) or a list of them. Per image: "image" (the file's
        path, or an in-memory image's position in the list) and "top", the top-k labels with their probabilities."""
        from cnnlab.run.prediction import predict

        if not isinstance(images, (list, tuple)):
            images = [images]
        return predict(str(self.dir), list(images), topk=topk, device=device)

    def explain(self, images=None, layers=None, gradcam_layer: str | None = None, n_images: int = 8, out=None,
                device: str = "auto"):
        """Pictures of what the network learned, as `cnnlab-explain <dir> [images] --layer ...`: the filters, feature
        maps, Grad-CAM over the images (files or directories; default: n_images test images) and the most confident
        mistakes, written to <dir>/explain (or `out`) and TensorBoard; returns them as an Explanation, which a
        notebook cell shows inline."""
        from cnnlab.api.pictures import Explanation
        from cnnlab.visualize.explaining import explain

        if isinstance(images, (str, Path)):
            images = [images]
        if isinstance(layers, str):
            layers = [layers]
        return Explanation(explain(str(self.dir), [str(p) for p in images or []], list(layers) if layers else None,
                                   gradcam_layer, n_images, None if out is None else str(out), device))

    def export(self, format: str = "onnx", out=None) -> dict:
        """The trained model as one file that runs without cnnlab, as `cnnlab-export <dir> --format ...`:
        onnx | torchscript | exported; returns the description written beside it (path, input, classes)."""
        from cnnlab.run.exporting import export

        return export(str(self.dir), format, None if out is None else str(out))

    def resume(self, *overrides: str, **keys) -> "Run":
        """Continue this run in its directory from its last checkpoint (`trainer.resume`), e.g. after Ctrl-C or
        with more epochs: run.resume(max_epochs=10). Returns the run (this directory) when it has finished."""
        from cnnlab.api.training_job import overrides_of, resume
        from cnnlab.errors import TrainingInterrupted

        try:
            return Run(resume(self.dir, overrides_of(overrides, keys)))
        except TrainingInterrupted as stopped:
            stopped.run = Run(stopped.run_dir)
            raise

    # ---- display ------------------------------------------------------------------------------------------
    def _model(self) -> str:
        cfg = self.config
        return str(cfg.model.name) if cfg is not None and "model" in cfg else "?"

    def _data(self) -> str:
        cfg = self.config
        return str(cfg.data.name) if cfg is not None and "data" in cfg and "name" in cfg.data else "?"

    def rows(self) -> list[tuple[str, str]]:
        """(field, value) of the compact table Jupyter shows: dir, model, data, epochs, best val metric, test acc."""
        metrics, history = self.metrics, self.epoch_rows()
        cfg = self.config
        monitor = str(cfg.trainer.monitor) if cfg is not None and "trainer" in cfg else "val/acc"
        max_epochs = cfg.trainer.max_epochs if cfg is not None and "trainer" in cfg else "?"
        done = metrics.get("epochs_completed", history[-1]["epoch"] if history else 0)
        best = metrics.get(f"best_{monitor}")
        if best is None and history:
            values = [r[monitor] for r in history if isinstance(r.get(monitor), (int, float))]
            best = (min if monitor.endswith("loss") else max)(values) if values else None
        test = metrics.get("test/acc")
        return [("dir", str(self.dir)), ("status", self.status), ("model", self._model()), ("data", self._data()),
                ("epochs", f"{done}/{max_epochs}"),
                (f"best {monitor}", "-" if best is None else f"{best:.4f}"
                 + (f" (epoch {metrics['best_epoch']})" if metrics.get("best_epoch") else "")),
                ("test/acc", "-" if test is None else f"{test:.4f}")]

    def _repr_html_(self) -> str:
        cells = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th><td style='text-align:left'>"
                        f"{html.escape(v)}</td></tr>" for k, v in self.rows())
        return f"<table><caption style='text-align:left'><b>cnnlab run</b></caption>{cells}</table>"

    def _repr_markdown_(self) -> str:
        return "| cnnlab run | |\n|---|---|\n" + "\n".join(f"| {k} | {v.replace('|', '/')} |" for k, v in self.rows())

    def __repr__(self) -> str:
        return f"Run({str(self.dir)!r}, {self.status})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Run) and other.dir == self.dir

    def __hash__(self) -> int:
        return hash(self.dir)


def figure(**options):
    """A matplotlib Figure (made without pyplot: no global figure state, no GUI backend) that a notebook cell shows
    inline as PNG even where the kernel's matplotlib integration is not active (pyplot never imported)."""
    return _inline_figure()(layout="constrained", **options)


@functools.cache
def _inline_figure():
    from matplotlib.figure import Figure  # matplotlib: imported by the first plot, not by the API

    class InlineFigure(Figure):
        def _repr_png_(self) -> bytes:
            buffer = io.BytesIO()
            self.savefig(buffer, format="png", bbox_inches="tight")
            return buffer.getvalue()

    return InlineFigure


class _Text(str):
    """A string that a notebook cell shows as printed text (line breaks kept), not as its repr."""

    def __repr__(self) -> str:
        return str(self)


def _number(text: str):
    if text == "" or text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value
