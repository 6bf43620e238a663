"""`cnnlab.compare(runs)`: the table cnnlab-compare prints (the hyper-parameters that differ, then the metrics), as
a pandas DataFrame, and the runs' curves overlaid; read from the runs' files, nothing written."""

from __future__ import annotations

import html
from pathlib import Path

from cnnlab.api.handle import Run, figure
from cnnlab.errors import ConfigError


class Comparison:
    """Runs side by side, as cnnlab-compare reads them (cnnlab.run.records, cnnlab.experiments.tables)."""

    def __init__(self, run_dirs: list[Path]):
        from cnnlab.experiments.tables import run_table
        from cnnlab.run.records import read_run

        self.runs = [Run(d) for d in run_dirs]
        self.records = [read_run(d) for d in run_dirs]
        self._table = run_table(self.records)

    @property
    def table(self):
        """One row per run (best first, as cnnlab-compare sorts them): the run, the keys whose values differ, the
        metrics, status; a pandas DataFrame when pandas is installed, else a list of dicts."""
        columns = [c for c in self._table.columns if any(row.get(c) is not None for row in self._table.rows)]
        rows = [{c: row.get(c) for c in columns} for row in self._table.rows]
        try:
            import pandas as pd
        except ImportError:
            return rows
        return pd.DataFrame(rows, columns=columns)

    def plot(self, metric: str | None = None):
        """Every run's per-epoch `metric` (default: the runs' monitored one) in one panel, a pruned trial's curve
        ending in a cross where it was stopped (as cnnlab-compare draws it); a matplotlib Figure, None when no
        run logged the metric."""
        from cnnlab.experiments.charts import curves_figure
        from cnnlab.experiments.tables import run_labels

        tag = metric or next((r.monitor for r in self.records if r.monitor), "val/loss")
        labels = run_labels(self.records)
        rows = {record.run_dir: run.epoch_rows() for run, record in zip(self.runs, self.records)}

        def points(record):
            return [(r["epoch"], r[tag]) for r in rows[record.run_dir] if isinstance(r.get(tag), (int, float))]

        return curves_figure(self.records, [labels[r.run_dir] for r in self.records], tag, points_of=points,
                             make_figure=figure)

    def _repr_markdown_(self) -> str:
        from cnnlab.experiments.tables import markdown_table

        return markdown_table(self._table) + (f"\n\n{self._table.note}" if self._table.note else "")

    def _repr_html_(self) -> str:
        table = self.table
        if hasattr(table, "to_html"):
            return table.to_html(index=False, na_rep="") + f"<p>{html.escape(self._table.note)}</p>"
        return "<pre>" + html.escape(self._repr_markdown_()) + "</pre>"

    def __repr__(self) -> str:
        return self._repr_markdown_()


def compare(*runs) -> Comparison:
    """Compare runs: Run objects, run dirs, sweep dirs (their job dirs) or study dirs (their trials), or one list
    of them, as `cnnlab-compare PATH...` does."""
    from cnnlab.experiments.collect import expand

    if len(runs) == 1 and isinstance(runs[0], (list, tuple)):
        runs = tuple(runs[0])
    if not runs:
        raise ConfigError("compare() needs at least one run (a Run, a run dir, a sweep dir or a study dir)")
    paths = [r.dir if isinstance(r, Run) else Path(r) for r in runs]
    found = [expand(p, "run") for p in paths]
    run_dirs = list(dict.fromkeys(d.resolve() for f in found for d in f.run_dirs))
    if not run_dirs:
        raise ConfigError(f"{paths[0]}: the study has no trial run dirs yet (trials/<number>/)")
    return Comparison(run_dirs)
