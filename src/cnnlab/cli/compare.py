"""`cnnlab-compare PATH...`: a table of runs (the hyper-parameters that differ, then the metrics), written as
compare.csv / compare.md, and PNG plots: the runs' validation curves overlaid and, for a study dir, Optuna's
optimisation history and parameter importances.

Pruned trials are drawn and marked in both the curves and the history; parameter importances are drawn only from
at least cnnlab.experiments.charts.MIN_IMPORTANCE_TRIALS completed trials (a note says why otherwise).

A PATH is a run dir, a sweep dir (`cnnlab-train -m`: its job dirs) or a study dir (`cnnlab-tune`: study.yaml
and trials/<number>/). Everything is read from files; nothing is trained.

Files already in the output folder under the names it writes are replaced only when they are its own earlier
output: compare.md ends with COMPARE_MARK (or, written before the mark, starts with its own title and counts
line), the CSV files and plots are those beside such a compare.md, or plots with cnnlab's PNG mark. Anything else is refused before anything is written, and left as it is.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

from cnnlab.cli.common import reports_config_errors
from cnnlab.errors import ConfigError
from cnnlab.experiments.collect import expand, load_study, study_info
from cnnlab.run.records import read_run
from cnnlab.experiments.charts import plot_curves, plot_study
from cnnlab.experiments.tables import (markdown_table, readable, run_labels, run_table, varied_keys,
                                       write_summary)
from cnnlab.util.outpaths import check_folder, check_target, png_is_ours, read_text

COMPARE_MARK = ("<!-- written by cnnlab-compare: running it again replaces this file, the CSV files and plots "
                "beside it -->")
STUDY_PLOTS = ("optimization_history.png", "param_importances.png")


def _compare_md_is_ours(out: Path) -> bool:
    """compare.md carries the mark; one written before the mark existed is known by its own first lines (the
    title, a blank line, then `<n> runs: ... Sorted ...`)."""
    text = read_text(out / "compare.md") or ""
    return COMPARE_MARK in text or re.match(r"# [^\n]*\n\n\d+ runs: [^\n]*\. Sorted ", text) is not None


def check_outputs(out: Path, key: str, names: list[str]) -> None:
    """Each file compare would write into `out` is absent or its own earlier output (see the module's doc)."""
    check_folder(out, key)
    for name in names:
        if name == "compare.md":
            owned, how = (lambda p: _compare_md_is_ours(p.parent)), "it does not end with cnnlab-compare's mark"
        elif name.endswith(".png"):  # a plot from before the PNG mark: vouched for by compare.md
            owned, how = (lambda p: png_is_ours(p) or _compare_md_is_ours(p.parent)), "it is not a plot cnnlab wrote"
        else:
            owned, how = (lambda p: _compare_md_is_ours(p.parent)), "no compare.md of cnnlab-compare is beside it"
        check_target(out / name, key, "cnnlab-compare", owned, how)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="cnnlab-compare", description="Compare cnnlab runs: a table of what differs and how each did, plots "
                                           "of their validation curves and, for a study, of the search.")
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="run dirs, sweep dirs or study dirs")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for compare.csv, compare.md and the plots (default: the one sweep or study "
                             "dir given, else ./compare-<date>-<time>)")
    parser.add_argument("--metric", default=None,
                        help="the per-epoch tag to plot (val/acc, val/loss, train/loss, ...; default: the runs' "
                             "monitored metric)")
    parser.add_argument("--no-plots", action="store_true", help="write the table only")
    parser.add_argument("--storage", default=None, metavar="URL",
                        help="the Optuna storage of the study dir(s) given (postgresql://..., mysql+pymysql://..., "
                             "sqlite:///path): needed for a study whose storage is not in its study dir, which is "
                             "never connected to unless named here")
    return parser.parse_args(argv)


def _legend(record, keys: list[str], name: str) -> str:
    """'<run>: lr=0.005544 weight_decay=0.000207 ...': the run as the table names it, then what differs (keys by
    their last part where that is unambiguous, long floats shortened)."""
    short = [k.rsplit(".", 1)[-1] for k in keys]
    shown = short if len(set(short)) == len(short) else keys
    parts = [f"{label}={readable(record.overrides.get(k, record.config.get(k)))}" for k, label in zip(keys, shown)
             if k in record.overrides or k in record.config]
    return f"{name}: {' '.join(parts)}" if parts else name


@reports_config_errors
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    found = [expand(p, "PATH") for p in args.paths]
    run_dirs = list(dict.fromkeys(d.resolve() for f in found for d in f.run_dirs))
    if not run_dirs:
        raise ConfigError(f"PATH {found[0].path}: the study has no trial run dirs yet (trials/<number>/)")
    if args.out is not None:
        out = args.out
    elif len(found) == 1 and found[0].kind in ("sweep", "study"):
        out = found[0].path
    else:
        out = Path(f"compare-{time.strftime('%Y%m%d-%H%M%S')}")
    studies = [f.path for f in found if f.kind == "study"]
    if args.storage is not None and not studies:
        raise ConfigError("--storage names the storage of a study dir, and no PATH is a study dir")
    # Before any file is written: a study whose storage cannot be opened is bad input too; one that is not
    # named is not connected to (its trials' run dirs are compared all the same).
    opened, unread = [], []
    if studies:
        from cnnlab.search.storage import NotNamed  # Optuna's imports: only study dirs need them
    for study in studies if not args.no_plots else []:
        try:
            opened.append(load_study(study, args.storage))
        except NotNamed as skipped:
            unread.append(str(skipped))

    records = [read_run(d) for d in run_dirs]
    tag = args.metric or next((r.monitor for r in records if r.monitor), "val/loss")
    curves_file = f"curves_{tag.replace('/', '_')}.png"
    outputs = ["compare.md", "compare.csv", "compare_seeds.csv"]  # compare.md first: it vouches for the rest
    outputs += [] if args.no_plots else [curves_file, *(STUDY_PLOTS if opened else ())]
    check_outputs(out, f"--out={out}" if args.out is not None else f"the output folder {out}", outputs)
    names = [study_info(s)["study_name"] for s in studies]
    title = f"Study {names[0]}" if len(names) == 1 and len(found) == 1 else f"{len(records)} runs"
    summary = write_summary(records, out, title, prefix="compare", footer=COMPARE_MARK)
    table = run_table(records)
    print(markdown_table(table))
    print(f"\n{table.note}; written: {summary}, {out / 'compare.csv'}, {out / 'compare_seeds.csv'}")
    if args.no_plots:
        return

    keys, labels = varied_keys(records), run_labels(records)
    legends = [_legend(r, keys, labels[r.run_dir]) for r in records]
    curves = plot_curves(records, legends, tag, out / curves_file)
    print(f"plot: {curves}" if curves else f"note: no run logged {tag} per epoch (see --metric): no curve plot")
    for note in unread:
        print(f"note: no plots of the search: {note}")
    for study in opened:
        files, notes = plot_study(study, out)
        for path in files:
            print(f"plot: {path}")
        for note in notes:
            print(f"note: {note}")
        for name in STUDY_PLOTS:  # an earlier run's plot that this one did not draw (check_outputs: it is ours)
            if out / name not in files and len(opened) == 1:
                (out / name).unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
