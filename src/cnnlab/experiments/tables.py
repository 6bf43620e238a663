"""Tables of runs: what varied, how each run did, and the mean +- std over seeds.

`run_table` has one row per run: the config keys that vary across the runs (the overrides that differ, then
any resolved key that differs for another reason), the monitored validation metric's best value, val/acc_best,
test/acc, test/loss, best_epoch, wall time, status and error; best run first by the monitored metric (its
mode decides), failed runs last. `seed_table` groups the completed runs that differ only by `seed`.
`write_summary` writes both as CSV and one Markdown file; sweeps, searches and cnnlab-compare call it.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from cnnlab.run.records import RunRecord

# Resolved keys that differ between any two runs without being a choice: where files go, the launch itself.
IGNORED_PREFIXES = ("paths.", "hydra.", "trainer.resume", "task_name")
FIXED_METRICS = ("val/acc_best", "test/acc", "test/loss", "best_epoch", "wall_time_s", "time/cpu_wait_share")
# What the two time columns measure, said under every table that shows them.
TIME_NOTE = ("wall s: the run's own process, from loading the data and building the model to the end of the test "
             "(Python's start, imports and the config's composition are not counted). cpu wait: the share of the "
             "training threads' time spent waiting for a CPU that other processes held (0 on an idle machine); "
             "above 0.2 a run's time measures the machine more than its configuration.")
SEED_KEY = "seed"
RUN_COLUMN = "run"
TAIL_COLUMNS = ("status", "error")


@dataclass
class Table:
    """Columns in display order; rows as column -> value (missing = blank)."""

    columns: list[str]
    rows: list[dict]
    note: str = ""   # one line saying how the rows are ordered


def _display(value) -> str:
    """A config value as the overrides would spell it, so that '0.01' from an override equals 0.01 resolved."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _value_of(record: RunRecord, key: str) -> str | None:
    if key in record.overrides:
        return record.overrides[key]
    if key in record.config:
        return _display(record.config[key])
    return None


def varied_keys(records: list[RunRecord]) -> list[str]:
    """Config keys whose value differs across the records: the overrides' keys first (in command-line order),
    then resolved keys that differ and are not under a varied group override (optimizer=sgd,adam changes
    every optimizer.* key: the group's column says it)."""
    override_keys = list(dict.fromkeys(k for r in records for k in r.overrides))
    varied = [k for k in override_keys if len({_value_of(r, k) for r in records} - {None}) > 1]
    configured = [r for r in records if r.config]  # a run that failed before writing its config has none
    for key in dict.fromkeys(k for r in configured for k in r.config):
        if key in varied or key.startswith(IGNORED_PREFIXES) or any(key.startswith(v + ".") for v in varied):
            continue
        if len({_display(r.config.get(key)) for r in configured}) > 1:
            varied.append(key)
    return varied


def _monitors(records: list[RunRecord]) -> list[str]:
    """The monitored metrics, most common first (the one rows are sorted by)."""
    counts = Counter(r.monitor for r in records if r.monitor)
    return [m for m, _ in counts.most_common()]


def metric_columns(records: list[RunRecord]) -> list[str]:
    return [f"best_{m}" for m in _monitors(records)] + [m for m in FIXED_METRICS]


def _metric(record: RunRecord, column: str):
    value = record.metrics.get(column)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if math.isfinite(value) else None


def _sorted(records: list[RunRecord]) -> tuple[list[RunRecord], str]:
    monitors = _monitors(records)
    if not monitors:
        return list(records), "in the order given"
    primary = monitors[0]
    mode = next(r.monitor_mode for r in records if r.monitor == primary)
    sign = -1.0 if mode == "max" else 1.0

    def key(r: RunRecord):
        value = _metric(r, f"best_{primary}") if r.monitor == primary else None
        if r.status == "failed":
            return (2, 0.0)
        return (0, sign * value) if value is not None else (1, 0.0)

    better = "higher" if mode == "max" else "lower"
    return sorted(records, key=key), f"best first by best {primary} ({better} is better); failed runs last"


def run_labels(records: list[RunRecord]) -> dict[Path, str]:
    """Each run dir's path relative to the runs' common folder ('0', '3', 'trials/7'), or its name alone."""
    paths = [Path(r.run_dir).resolve() for r in records]
    if len(paths) == 1:
        return {Path(records[0].run_dir): paths[0].name}
    common = Path(*_common_parts([p.parts for p in paths]))
    return {Path(r.run_dir): str(p.relative_to(common)) or p.name for r, p in zip(records, paths)}


def _common_parts(parts: list[tuple]) -> tuple:
    out = []
    for level in zip(*parts):
        if len(set(level)) > 1:
            break
        out.append(level[0])
    return tuple(out)


def run_table(records: list[RunRecord]) -> Table:
    keys = varied_keys(records)
    metrics = metric_columns(records)
    ordered, note = _sorted(records)
    labels = run_labels(records)
    rows = []
    for r in ordered:
        row = {RUN_COLUMN: labels[Path(r.run_dir)]}
        row.update({k: _value_of(r, k) for k in keys})
        row.update({m: _metric(r, m) for m in metrics})
        row.update(status=r.status, error=r.error)
        rows.append(row)
    return Table([RUN_COLUMN, *keys, *metrics, *TAIL_COLUMNS], rows, note)


def seed_table(records: list[RunRecord]) -> Table:
    """Completed runs grouped by every varied key but `seed`: count, then mean and sample std per metric
    (std blank for a group of one). Groups are ordered best first by the monitored metric's mean."""
    keys = [k for k in varied_keys(records) if k != SEED_KEY]
    metrics = metric_columns(records)
    groups: dict[tuple, list[RunRecord]] = {}
    for r in records:
        if r.status == "completed":
            groups.setdefault(tuple(_value_of(r, k) for k in keys), []).append(r)
    rows = []
    for values, members in groups.items():
        row = dict(zip(keys, values))
        row["n"] = len(members)
        for m in metrics:
            found = [v for v in (_metric(r, m) for r in members) if v is not None]
            row[f"{m} mean"], row[f"{m} std"] = seed_mean_std(found)
        rows.append(row)
    monitors = _monitors(records)
    note = "completed runs only"
    if monitors:
        mode = next(r.monitor_mode for r in records if r.monitor == monitors[0])
        sign = -1.0 if mode == "max" else 1.0
        column = f"best_{monitors[0]} mean"
        rows.sort(key=lambda row: (row[column] is None, sign * (row[column] or 0.0)))
        note += f"; best first by the mean of best {monitors[0]}"
    columns = [*keys, "n", *(f"{m} {stat}" for m in metrics for stat in ("mean", "std"))]
    return Table(columns, rows, note)


def write_csv(table: Table, path: Path) -> Path:
    """The table as CSV, written atomically (a reader never sees half a table)."""
    from cnnlab.util.outpaths import write_atomic

    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=table.columns, extrasaction="ignore")
    writer.writeheader()
    for row in table.rows:
        writer.writerow({c: "" if row.get(c) is None else row.get(c) for c in table.columns})
    return write_atomic(Path(path), text.getvalue())


def _cell(column: str, value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if column == "time/cpu_wait_share":
            return f"{value:.2f}"
        return f"{value:.1f}" if column.startswith(("wall_time_s", "best_epoch")) else f"{value:.4f}"
    text = " ".join(str(value).split())  # one line per row, whatever the error said
    return _clip(readable(text))


def readable(value) -> str:
    """A value to read: a searched float such as 0.005544373508303136 as 0.005544 (4 significant digits;
    the CSV files keep the exact value), anything else as it is."""
    text = str(value)
    return f"{float(text):.4g}" if _long_float(text) else text


def _clip(text: str) -> str:
    if len(text) > 120:
        text = text[:117] + "..."
    return text.replace("|", "\\|")


def _long_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return "." in text and len(text.lstrip("-").replace("0.", "", 1).lstrip("0")) > 6


def _header(column: str) -> str:
    return {"wall_time_s": "wall s", "best_epoch": "best epoch", "time/cpu_wait_share": "cpu wait"}.get(
        column, column.replace("best_", "best "))


def markdown_table(table: Table) -> str:
    """A GitHub table whose columns are padded to line up in a terminal too; empty columns left out."""
    columns = [c for c in table.columns if any(row.get(c) is not None for row in table.rows)]
    cells = [[_header(c) for c in columns]] + [[_cell(c, row.get(c)) for c in columns] for row in table.rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    numeric = [all(isinstance(row.get(c), (int, float)) or row.get(c) is None for row in table.rows) for c in columns]

    def line(values):
        return "| " + " | ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if num else ("-" * (w + 2)) for w, num in zip(widths, numeric)) + "|"
    return "\n".join([line(cells[0]), rule, *(line(c) for c in cells[1:])])


def seed_mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """The mean and the sample standard deviation of one group's seeds: (None, None) for no value, std None for one."""
    return (statistics.fmean(values) if values else None), (statistics.stdev(values) if len(values) > 1 else None)


def mean_std(mean: float, std: float | None, digits: int) -> str:
    """'mean ± std' with `digits` decimals each; the mean alone where there is no std (one seed)."""
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def seed_markdown(table: Table) -> Table:
    """The seed table with each metric's mean and std in one 'mean ± std' cell, for reading."""
    metric_names = [c[:-5] for c in table.columns if c.endswith(" mean")]
    keys = [c for c in table.columns if not c.endswith((" mean", " std"))]
    rows = []
    for row in table.rows:
        out = {k: row.get(k) for k in keys}
        for m in metric_names:
            mean, std = row.get(f"{m} mean"), row.get(f"{m} std")
            if mean is not None:
                digits = 1 if m in ("wall_time_s", "best_epoch") else 2 if m == "time/cpu_wait_share" else 4
                out[m] = mean_std(mean, std, digits)
        rows.append(out)
    return Table([*keys, *metric_names], rows, table.note)


def counts_line(records: list[RunRecord]) -> str:
    counts = Counter(r.status for r in records)
    return f"{len(records)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.most_common())


def summary_markdown(records: list[RunRecord], title: str) -> str:
    runs, seeds = run_table(records), seed_table(records)
    parts = [f"# {title}", "", counts_line(records) + f". Sorted {runs.note}.", "", markdown_table(runs), ""]
    if any(row["n"] > 1 for row in seeds.rows):
        parts += ["## Mean ± std over seeds", "", f"Sample std, {seeds.note}.", "",
                  markdown_table(seed_markdown(seeds)), ""]
    if any(_metric(r, "wall_time_s") is not None for r in records):
        parts += [TIME_NOTE, ""]
    return "\n".join(parts)


def write_summary(records: list[RunRecord], out_dir: Path, title: str, prefix: str = "summary",
                  footer: str = "") -> Path:
    """Write <prefix>.csv (one row per run), <prefix>_seeds.csv (mean/std over seeds) and <prefix>.md (both
    tables, then `footer`) into out_dir, each atomically; returns the Markdown file's path."""
    from cnnlab.util.outpaths import write_atomic

    out_dir = Path(out_dir)
    text = summary_markdown(records, title)
    path = write_atomic(out_dir / f"{prefix}.md", text + (footer + "\n" if footer else ""))  # first: it vouches
    write_csv(run_table(records), out_dir / f"{prefix}.csv")                               # for the CSV files
    write_csv(seed_table(records), out_dir / f"{prefix}_seeds.csv")
    return path
