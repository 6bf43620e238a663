"""metrics.csv in the run dir: one row per epoch with every scalar the epoch logged (the dict TensorBoard's
per-epoch scalars come from: epoch, train/*, val/*, lr, throughput/img_s, time/epoch_s, ...).

Readable without TensorBoard or pandas (`csv.DictReader`). The header is the union of the keys so far, `epoch`
first, then in the order they first appeared; an epoch that brings a new key rewrites the file under the new
header (a cell an epoch did not log is empty). A fit starts the file from `trainer.history`, so a resumed run
holds exactly the epochs up to the one it resumed (rows written after it by the interrupted run are gone) and
then appends its own. Numbers are written as Python prints them, which reads back to the same float.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import TYPE_CHECKING

from cnnlab.engine.callbacks import Callback
from cnnlab.engine.checkpoint import write_bytes_atomic

if TYPE_CHECKING:
    from cnnlab.engine.trainer import Trainer

FILE_NAME = "metrics.csv"


def scalars(metrics: dict) -> dict:
    """The numbers of an epoch's metrics (what a CSV cell can hold)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class MetricsCSV(Callback):
    """Writes `path` (the run dir's metrics.csv); rank 0 only, like every callback that writes files."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.columns: list[str] = ["epoch"]
        self.rows: list[dict] = []

    def on_fit_start(self, trainer: Trainer) -> None:
        self.rows = [scalars(m) for m in trainer.history]
        for row in self.rows:
            self._add_columns(row)
        self._rewrite()

    def on_epoch_end(self, trainer: Trainer, metrics: dict) -> None:
        row = scalars(metrics)
        self.rows.append(row)
        if self._add_columns(row) or not self.path.is_file():
            self._rewrite()
            return
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.columns, lineterminator="\n").writerow(row)

    def _add_columns(self, row: dict) -> bool:
        new = [k for k in row if k not in self.columns]
        self.columns += new
        return bool(new)

    def _rewrite(self) -> None:
        """The whole file from the rows in memory, atomically; no rows: no file."""
        if not self.rows:
            self.path.unlink(missing_ok=True)
            return
        out = io.StringIO(newline="")
        writer = csv.DictWriter(out, self.columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        write_bytes_atomic(out.getvalue().encode(), self.path)
