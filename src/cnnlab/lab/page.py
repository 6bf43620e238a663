"""A lesson's page: the question, the command, the table of results (mean ± std over seeds), overlaid learning
curves, what the textbook says, and what this run shows, including which differences are within the noise.
Every number on the page is read from the runs' own files (metrics.json, TensorBoard events).

A page is written over an existing <lesson>.md only when that file is an earlier page of the same lesson (it has
the lesson's `cnnlab-lab <lesson>` command block and the "Measured by that command on" line that only
write_page writes); its images img/<lesson>_*.png are replaced or removed only when cnnlab wrote them (its PNG
mark) or they sit beside such a page. Anything else is refused before any arm trains (check_page_target)."""

from __future__ import annotations

import functools
import math
import platform
import re
import statistics
from datetime import date
from pathlib import Path

from cnnlab.errors import ConfigError
from cnnlab.run.records import RunRecord, read_curve
from cnnlab.experiments.tables import mean_std, seed_mean_std
from cnnlab.lab.lessons import Lesson, lesson_names
from cnnlab.lab.arms import LessonResult
from cnnlab.engine.cpu_wait import CONTENDED_SHARE
from cnnlab.util.outpaths import check_folder, check_target, png_is_ours, read_text, write_atomic
from cnnlab.util.source_tree import git_commit

HIGHER_IS_BETTER = {"test/acc": True, "val/acc_best": True, "val/acc": True, "train/acc": True, "test/loss": False,
                    "val/loss": False, "train/loss": False, "gap": False}
HEADERS = {"best_val": "best val metric", "gap": "train-val acc gap", "wall_time_s": "wall s",
           "epochs": "epochs run", "best_epoch": "best epoch", "params": "parameters",
           "trials": "trials", "pruned": "pruned", "epochs_trained": "epochs trained (all trials)"}


def curve(run_dir: Path, tag: str) -> tuple[tuple[int, float], ...]:
    """read_curve, parsed once per state of the run's event files: a page reads the same tags for its table
    (train/acc also for the gap) and again for its plots."""
    files = sorted(Path(run_dir).glob("events.out.tfevents.*"))
    stamp = tuple((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in files)
    return _parsed_curve(str(run_dir), tag, stamp)


@functools.lru_cache(maxsize=4096)
def _parsed_curve(run_dir: str, tag: str, stamp: tuple) -> tuple[tuple[int, float], ...]:
    return tuple(read_curve(Path(run_dir), tag))


def value(record: RunRecord, column: str):
    """One table cell's number for one run (None where the run did not produce it)."""
    m = record.metrics
    if record.status != "completed" and column not in ("epochs",):
        return None
    if column in ("test/acc", "test/loss", "val/acc_best", "params", "best_epoch", "trials", "pruned",
                  "epochs_trained"):
        return m.get(column)
    if column == "best_val":
        return record.best_value
    if column == "epochs":
        return m.get("epochs_completed")
    if column == "wall_time_s":
        return record.wall_time_s
    if column in ("val/acc", "val/loss", "train/acc", "train/loss"):
        points = curve(record.run_dir, column)
        return points[-1][1] if points else None
    if column == "gap":
        train, val = value(record, "train/acc"), value(record, "val/acc")
        return None if train is None or val is None else train - val
    raise KeyError(column)


def summarise(values: list) -> tuple[float | None, float | None, int]:
    """(mean, sample std or None, n) of the finite values."""
    finite = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return (*seed_mean_std(finite), len(finite))


def _fmt(column: str, mean, std, n: int, seeds: int) -> str:
    if mean is None:
        return "failed" if n == 0 else "-"
    if column in ("params", "epochs", "best_epoch", "trials", "pruned", "epochs_trained") and (std is None or std == 0):
        return f"{mean:,.0f}" if column == "params" else f"{mean:.0f}"
    digits = 1 if column in ("wall_time_s", "epochs", "best_epoch", "trials", "pruned", "epochs_trained") else 4
    text = mean_std(mean, std, digits)
    return text + (f" ({n}/{seeds})" if n < seeds else "")


def table(result: LessonResult) -> tuple[list[str], list[list[str]], dict]:
    """Header, rows and the raw (mean, std, n) per arm and column."""
    lesson = result.lesson
    stats = {}
    rows = []
    for arm in result.arms:
        seeds = len(arm.runs)
        cells = [f"`{arm.name}`"]
        for column in lesson.columns:
            mean, std, n = summarise([value(r, column) for r in arm.runs])
            stats[(arm.name, column)] = (mean, std, n)
            cells.append(_fmt(column, mean, std, n, seeds))
        rows.append(cells)
    header = ["arm", *(HEADERS.get(c, c) for c in lesson.columns)]
    return header, rows, stats


def noise_lines(result: LessonResult, stats: dict) -> list[str]:
    """The ranking by the first column, and which differences from the best are within the noise (the means
    differ by less than the sum of the two standard deviations: the rule stated on the page)."""
    column = result.lesson.columns[0]
    higher = HIGHER_IS_BETTER.get(column, True)
    ranked = [(a.name, *stats[(a.name, column)]) for a in result.arms if stats[(a.name, column)][0] is not None]
    if not ranked:
        return [f"No arm produced {column}."]
    ranked.sort(key=lambda t: t[1], reverse=higher)
    best, best_mean, best_std, _ = ranked[0]
    lines = [f"Ranked by {column} ({'higher' if higher else 'lower'} is better): "
             + ", ".join(f"`{name}` {mean:.4f}" for name, mean, _, _ in ranked) + "."]
    if best_std is None:
        lines.append("One seed per arm: no estimate of the noise (run without --quick for 3 seeds).")
        return lines
    within = [name for name, mean, std, _ in ranked[1:] if std is not None and abs(mean - best_mean) < best_std + std]
    beyond = [name for name, mean, std, _ in ranked[1:] if name not in within]
    if within:
        lines.append(f"Within the noise of the best (`{best}`): {', '.join(f'`{n}`' for n in within)} (the means differ by "
                     f"less than the sum of their standard deviations over seeds).")
    if beyond:
        lines.append(f"Worse than `{best}` by more than the noise: {', '.join(f'`{n}`' for n in beyond)}.")
    return lines


def contention_lines(result: LessonResult) -> list[str]:
    """Where runs trained while other processes held the CPUs: their wall times measure the machine."""
    if "wall_time_s" not in result.lesson.columns:
        return []
    runs = [r for a in result.arms for r in a.runs if r.status == "completed"]
    busy = [r for r in runs if (r.metrics.get("time/cpu_wait_share") or 0.0) > CONTENDED_SHARE]
    if not busy:
        return []
    return [f"{len(busy)} of {len(runs)} runs trained while other processes held the CPUs (their training threads "
            f"waited for a CPU more than {CONTENDED_SHARE:.0%} of the time, `time/cpu_wait_share` in metrics.json): "
            "compare their wall times with care.", ""]


def plot_curves(result: LessonResult, tag: str, path: Path) -> Path | None:
    """Every arm's curve of `tag` per epoch: the mean over seeds, with the seeds' range shaded."""
    from cnnlab.util.plotting import pyplot, save

    curves = []
    for arm in result.arms:
        per_seed = [dict(curve(r.run_dir, tag)) for r in arm.runs if r.run_dir.is_dir()]
        per_seed = [c for c in per_seed if c]
        if not per_seed:
            continue
        epochs = sorted(set().union(*per_seed))
        rows = [[c[e] for c in per_seed if e in c] for e in epochs]
        curves.append((arm.name, epochs, [statistics.fmean(r) for r in rows], [min(r) for r in rows],
                       [max(r) for r in rows]))
    if not curves:
        return None
    plt = pyplot()
    from cnnlab.experiments.charts import whole_numbers

    fig, ax = plt.subplots(figsize=(9, 5), layout="constrained")
    single = all(len(epochs) == 1 for _, epochs, _, _, _ in curves)  # one epoch: each curve is a point
    for name, epochs, mean, low, high in curves:
        line, = ax.plot(epochs, mean, label=name, marker="o" if len(epochs) < 15 else None,
                        markersize=8 if len(epochs) == 1 else 3)
        if any(lo != hi for lo, hi in zip(low, high)):
            ax.fill_between(epochs, low, high, color=line.get_color(), alpha=0.15, linewidth=0)
    whole_numbers(ax.xaxis, [e for _, epochs, _, _, _ in curves for e in epochs])
    if tag.endswith("loss") and all(v > 0 for _, _, m, _, _ in curves for v in m):
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(tag)
    seeds = max(len(a.runs) for a in result.arms)
    ax.set_title(f"{result.lesson.name}: {tag}" + (f" (mean of {seeds} seeds, range shaded)" if seeds > 1 else "")
                 + (" (one epoch: each run is a point, not a curve)" if single else ""))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=9)
    return save(fig, path)


def plot_series(result: LessonResult, stats: dict, path: Path) -> Path | None:
    """The lesson's own picture (Lesson.series): a column's mean over seeds against x, one line per group, with
    the standard deviation as error bars."""
    from cnnlab.util.plotting import pyplot, save

    series = result.lesson.series
    done = {a.name for a in result.arms}
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5), layout="constrained")
    drawn = 0
    for name, points in series.lines.items():
        xs, means, errs = [], [], []
        for x, arm in sorted(points.items()):
            mean, std, _ = stats.get((arm, series.column), (None, None, 0)) if arm in done else (None, None, 0)
            if mean is not None:
                xs.append(x), means.append(mean), errs.append(std or 0.0)
        if xs:
            ax.errorbar(xs, means, yerr=errs, marker="o", capsize=3, label=name)
            drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    if series.log_x:
        ax.set_xscale("log")
        ax.set_xticks(sorted({x for p in series.lines.values() for x in p}))
        ax.get_xaxis().set_major_formatter(plt.matplotlib.ticker.ScalarFormatter())
        ax.get_xaxis().set_minor_formatter(plt.matplotlib.ticker.NullFormatter())
    ax.set_xlabel(series.x_label)
    ax.set_ylabel(series.column)
    ax.set_title(f"{result.lesson.name}: {series.column} (mean ± std over seeds)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(frameon=False)
    return save(fig, path)


def _key(override: str) -> str:
    """The config key (or group) an override sets: 'trainer.max_epochs=1', '+x=1', '~x' -> trainer.max_epochs, x."""
    return override.split("=", 1)[0].lstrip("+~")


def applied(base: list[str], on_top: list[str]) -> list[str]:
    """`base` with each override of `on_top` in place of the one it replaces (same key), the others appended:
    what a run made with base then on_top (the last of a key wins) ran with."""
    last = {_key(o): o for o in on_top}
    shown = [last.pop(_key(o), o) if _key(o) in last else o for o in base]
    return shown + list(dict.fromkeys(o for o in on_top if last.get(_key(o)) == o))


def setup_lines(result: LessonResult, overrides: list[str]) -> list[str]:
    """The Setup section: the settings the runs actually ran with, i.e. the lesson's common overrides and each
    arm's, with --quick's and the command line's applied on top (they come last in every run's overrides,
    cnnlab.lab.arms.arm_overrides), and which of the lesson's settings they replaced."""
    lesson = result.lesson
    on_top = [*(lesson.quick if result.quick else []), *overrides]
    common = applied(list(lesson.common), on_top)
    lines = ["Every run: `" + " ".join(common) + "`" if common else "Every run: the defaults."]
    replaced = [o for o in [*lesson.common, *(o for a in result.arms for o in a.overrides)]
                if _key(o) in {_key(t) for t in on_top} and o not in on_top]
    said = []
    if result.quick and lesson.quick:
        said.append(f"`--quick` set `{' '.join(lesson.quick)}` and one seed")
    if overrides:
        said.append(f"the command line set `{' '.join(overrides)}`")
    if said:
        said = " and ".join(said)
        lines += ["", said[0].upper() + said[1:] + ", on top of the lesson's settings"
                  + (f" (replacing `{' '.join(dict.fromkeys(replaced))}`)" if replaced else "") + "."]
    lines += ["", "| arm | overrides |", "|---|---|"]
    for arm in result.arms:  # an arm's own keys, with the value on top where it was replaced
        own = {_key(o) for o in arm.overrides}
        shown = applied(arm.overrides, [o for o in on_top if _key(o) in own])
        lines.append(f"| `{arm.name}` | `{' '.join(shown) or '(none)'}` |")
    return lines


def smoke_warning(result: LessonResult) -> str:
    """The line a quick page puts above its results."""
    lesson = result.lesson
    return (f"**Smoke run (`--quick`: one seed, `{' '.join(lesson.quick) or 'the lesson as it is'}`): these numbers "
            f"only show that the lesson runs. They are not the lesson's results and are not to be compared with what "
            f"the textbook says below; `cnnlab-lab {lesson.name}` without `--quick` measures those.**")


def _epochs_drawn(result: LessonResult, tag: str) -> int:
    """The most epochs any run of the lesson logged `tag` for."""
    return max((len(curve(r.run_dir, tag)) for a in result.arms for r in a.runs if r.run_dir.is_dir()), default=0)


def command(lesson: Lesson, quick: bool, overrides: list[str]) -> str:
    return " ".join(["cnnlab-lab", lesson.name, *(["--quick"] if quick else []), *overrides])


def page_is_ours(page: Path, lesson: str) -> bool:
    """Whether `page` is a page write_page wrote for `lesson` (see the module's doc)."""
    text = read_text(page)
    if text is None:
        return False
    return (re.search(rf"^```bash\ncnnlab-lab {re.escape(lesson)}(?: .*)?\n```$", text, re.MULTILINE) is not None
            and re.search(r"^Measured by that command on ", text, re.MULTILINE) is not None)


def _own_images(img: Path, lesson: str) -> list[Path]:
    """img/<lesson>_*.png: the names a page of `lesson` uses (not those of a lesson whose name extends it)."""
    longer = tuple(f"{name}_" for name in lesson_names() if name != lesson and name.startswith(lesson))
    return [png for png in sorted(img.glob(f"{lesson}_*.png")) if not png.name.startswith(longer)]


def check_page_target(page_dir: Path, lesson: str, key: str) -> None:
    """The page and its images may be written into `page_dir`: the page is absent or an earlier page of the
    lesson, every image of the lesson's names already in img/ is cnnlab's, and both folders are writable.
    ConfigError otherwise, before anything runs; nothing is touched."""
    page_dir = Path(page_dir).expanduser()
    page = page_dir / f"{lesson}.md"
    check_target(page, key, "cnnlab-lab", lambda p: page_is_ours(p, lesson),
                 f"it is not a page cnnlab-lab wrote for lesson {lesson}")
    img = page_dir / "img"
    check_folder(img, key)
    beside_own_page = page.is_file()  # checked above: a page there is ours
    for png in _own_images(img, lesson) if img.is_dir() else []:
        check_target(png, key, "cnnlab-lab", lambda p: beside_own_page or png_is_ours(p),
                     f"it is not an image cnnlab wrote, and no page of lesson {lesson} is beside it")


def write_page(result: LessonResult, page_dir: Path, overrides: list[str] = ()) -> Path:
    """<page_dir>/<lesson>.md and its PNGs in <page_dir>/img/ (each file atomically)."""
    lesson = result.lesson
    check_page_target(page_dir, lesson.name, f"--page={page_dir}")
    img = page_dir / "img"
    header, rows, stats = table(result)
    plots = []
    if lesson.series is not None:
        path = plot_series(result, stats, img / f"{lesson.name}_{lesson.series.column.replace('/', '_')}_series.png")
        if path is not None:
            plots.append((lesson.series.column, path))
    for tag in lesson.curves:
        path = plot_curves(result, tag, img / f"{lesson.name}_{tag.replace('/', '_')}.png")
        if path is not None:
            plots.append((tag, path))
    extra_plots = []
    for i, source in enumerate(result.extras.get("plots", [])):
        target = img / f"{lesson.name}_{result.lesson.extra}_{i}_{Path(source).name}"
        try:
            data = Path(source).read_bytes()
        except OSError as bad:
            raise ConfigError(f"the lesson's plot {source} cannot be read ({bad.strerror}): run the lesson again "
                              f"instead of --page-only") from None
        extra_plots.append(write_atomic(target, data))

    lines = [f"# {lesson.title}", "", lesson.question.strip(), "",
             "```bash", command(lesson, result.quick, list(overrides)), "```", "",
             _measured_line(result), "", "## Setup", ""]
    lines += setup_lines(result, list(overrides))
    lines += ["", "## Results", ""]
    if result.quick:
        lines += [smoke_warning(result), ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += [""] + noise_lines(result, stats) + [""] + contention_lines(result)
    for tag, path in plots:
        lines += [f"![{tag}](img/{path.name})", ""]
    if plots and all(_epochs_drawn(result, tag) <= 1 for tag in lesson.curves):
        lines += ["Every run trained one epoch, so each \"curve\" above is a single point per arm: there is no "
                  "trend to read from it.", ""]
    if result.extras:
        lines += ["## " + {"lr_finder": "The LR finder's pick", "gradients": "Gradient flow",
                           "filters": "Learned filters and feature maps"}.get(lesson.extra, lesson.extra), ""]
        lines += result.extras.get("text", []) + [""]
        lines += [f"![{p.stem}](img/{p.name})" for p in extra_plots] + [""]
    lines += ["## What the textbook says", ""]
    if result.quick:
        lines += ["What the full run (without `--quick`) is expected to show; the smoke run's numbers above cannot "
                  "confirm or contradict it.", ""]
    lines += [lesson.expectation.strip(), ""]
    if lesson.discussion.strip() and not result.quick:
        lines += ["## What this run shows", "", lesson.discussion.strip(), ""]
    page = write_atomic(page_dir / f"{lesson.name}.md", "\n".join(lines))
    _remove_stale_images(img, lesson.name, {path for _, path in plots} | set(extra_plots))
    return page


def _remove_stale_images(img: Path, lesson: str, kept: set[Path]) -> None:
    """A page written again with other curves or columns leaves no PNG of its lesson behind that it no longer
    shows (images of a lesson whose name extends this one's, e.g. depth_x for depth, are not its own; the
    page was just written, so the images of its names are its own: check_page_target vouched for them)."""
    for png in _own_images(img, lesson):
        if png not in kept:
            png.unlink()


# The page's "Measured by that command ..." line, as _measured_line writes it: the index reads the minutes back.
MEASURED_MINUTES = re.compile(r"^Measured by that command on [^:]+: .* in ([0-9.]+) minutes on"
                              r"(?:[^\n]*?load average ([0-9.]+) at the end)?", re.MULTILINE)


def measured_minutes(page: Path) -> str | None:
    """'12.4 (load 2.0)' from a recorded page, None for a page without the line (or a quick run's)."""
    text = page.read_text()
    match = MEASURED_MINUTES.search(text)
    if match is None or "**Quick smoke run" in text:
        return None
    return match.group(1) + (f" (load {match.group(2)})" if match.group(2) else "")


def _measured_line(result: LessonResult) -> str:
    seeds = max(len(a.runs) for a in result.arms)
    runs = sum(len(a.runs) for a in result.arms)
    when = result.measured or {}
    return (f"Measured by that command on {when.get('date', date.today().isoformat())}: {runs} runs "
            f"({len(result.arms)} arms x {seeds} seed{'s' if seeds > 1 else ''}) in {result.seconds / 60:.1f} minutes "
            f"on {when.get('machine') or _machine()}{', cnnlab ' + when['commit'] if when.get('commit') else ''}."
            + (" **Quick smoke run: one seed, a few steps; the numbers mean nothing.**" if result.quick else ""))


def measurement() -> dict:
    """When, where and at which commit a lesson ran: saved beside its runs (lab.json) for the page."""
    return {"date": date.today().isoformat(), "machine": _machine(), "commit": _commit()}


def _machine() -> str:
    import os

    import torch

    load = f", load average {os.getloadavg()[0]:.1f} at the end" if hasattr(os, "getloadavg") else ""
    return (f"{os.cpu_count()} CPU cores ({platform.machine()}), torch {torch.__version__.split('+')[0]}, "
            f"{torch.get_num_threads()} torch thread{'s' if torch.get_num_threads() > 1 else ''}{load}")


def _commit() -> str | None:
    head = git_commit(short=True, dirty=False)
    return head["commit"] if head else None
