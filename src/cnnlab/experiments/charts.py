"""PNG plots of runs and studies (matplotlib, Agg backend): overlaid validation curves (pruned trials marked),
and a study's optimisation history (pruned trials drawn and marked) and parameter importances (from enough
completed trials only)."""

from __future__ import annotations

from pathlib import Path

from cnnlab.run.records import RunRecord, read_curve
from cnnlab.util.plotting import pyplot, save

LINE_STYLES = ("-", "--", ":", "-.")


def whole_numbers(axis, values) -> None:
    """Ticks at whole numbers only on a matplotlib axis of epochs or trial numbers; with one value alone (one
    epoch, one trial) that value is the one tick, where MaxNLocator would fall back to fractions around it."""
    from matplotlib.ticker import FixedLocator, MaxNLocator

    values = sorted(set(values))
    if len(values) == 1:
        axis.set_major_locator(FixedLocator(values))
        if axis.axis_name == "x":
            axis.axes.set_xlim(values[0] - 1, values[0] + 1)
    else:
        axis.set_major_locator(MaxNLocator(integer=True))


def plot_curves(records: list[RunRecord], labels: list[str], tag: str, path: Path) -> Path | None:
    """One line per run of `tag` against the epoch, the legend naming each run; None when no run logged it.
    20 colours, then the same colours dashed, dotted...: about 30 runs stay distinguishable."""
    fig = curves_figure(records, labels, tag)
    return None if fig is None else save(fig, path)


def pruned_epoch(record: RunRecord) -> int | None:
    """The epoch a pruned run (a study's pruned trial) was stopped after; None for any other run."""
    if record.status != "pruned":
        return None
    epoch = record.failure.get("pruned_at_epoch", record.metrics.get("epochs_completed"))
    return epoch if isinstance(epoch, int) else None


def curves_figure(records: list[RunRecord], labels: list[str], tag: str, points_of=None, make_figure=None):
    """The figure plot_curves saves: a pruned run's curve ends in a large cross at the epoch it was stopped after
    (a run pruned after its first epoch is the cross alone) and its legend entry, drawn with the cross, says that
    epoch; None when no run logged `tag`.

    points_of(record) -> [(epoch, value)]: where the values come from (default: the run's event files);
    make_figure(figsize=...) -> Figure: the figure to draw in (default: pyplot's, on the Agg backend)."""
    from matplotlib import colormaps
    from matplotlib.lines import Line2D

    points_of = points_of or (lambda record: read_curve(record.run_dir, tag))
    curves = [(label, points_of(r), pruned_epoch(r)) for r, label in zip(records, labels)]
    curves = [(label, points, pruned) for label, points, pruned in curves if points]
    if not curves:
        return None
    colours = colormaps["tab20" if len(curves) > 10 else "tab10"].colors
    # A two-column legend beyond 20 runs needs room of its own: widen the figure rather than shrink the plot.
    size = (10 if len(curves) <= 20 else 14, 5.5)
    if make_figure is None:
        fig, ax = pyplot().subplots(figsize=size, layout="constrained")
    else:
        fig = make_figure(figsize=size)
        ax = fig.subplots()
    handles = []
    for i, (label, points, pruned) in enumerate(curves):
        epochs, values = zip(*points)
        style = dict(color=colours[i % len(colours)], linestyle=LINE_STYLES[(i // len(colours)) % len(LINE_STYLES)],
                     linewidth=1.5)
        line, = ax.plot(epochs, values, marker="o" if len(epochs) < 15 else None, markersize=3, **style,
                        label=label if pruned is None else f"{label} (pruned at epoch {pruned})")
        if pruned is not None:
            cross = dict(marker="X", markersize=9, markeredgecolor="black", markeredgewidth=0.5)
            ax.plot(epochs[-1:], values[-1:], color=style["color"], linestyle="none", **cross)
            line = Line2D([], [], **style, **cross, label=line.get_label())
        handles.append(line)
    whole_numbers(ax.xaxis, [e for _, points, _ in curves for e, _ in points])
    ax.set_xlabel("epoch")
    ax.set_ylabel(tag)
    pruned = sum(p is not None for _, _, p in curves)
    ax.set_title(f"{tag} per epoch ({len(curves)} runs"
                 + (f", {pruned} pruned; X: where a pruned run stopped" if pruned else "") + ")")
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              fontsize=8 if len(curves) <= 15 else 6.5, ncol=1 if len(curves) <= 20 else 2, frameon=False)
    return fig


# Parameter importances are drawn from at least this many completed trials, by fANOVA (a random forest; seeded,
# so the same study gives the same bars). Measured on a search where lr alone decides a noisy objective and one or
# two other parameters are only there (docs/experiments.md): fANOVA ranked lr first in 33-39 of 50 seeds with 5
# completed trials, 47-49 with 10; Optuna's default evaluator (PED-ANOVA since Optuna 4.3) in 25 of 40 with 10,
# 31 with 30. Below the minimum the command says so instead of drawing bars that look like findings.
MIN_IMPORTANCE_TRIALS = 10
PRUNED_MARKERS = ("X", "v", "^", "s", "D", "P", "<", ">")   # one per pruning epoch in the history plot


def plot_study(study, out_dir: Path) -> tuple[list[Path], list[str]]:
    """A study's optimisation history and parameter importances as PNGs; returns (files, notes on what was
    skipped)."""
    files, notes = [], []
    fig = history_figure(study)
    if fig is None:
        return files, ["no optimisation history: the study has no completed or pruned trial"]
    files.append(save(fig, Path(out_dir) / "optimization_history.png"))
    fig, note = importances_figure(study)
    if fig is not None:
        files.append(save(fig, Path(out_dir) / "param_importances.png"))
    if note:
        notes.append(note)
    return files, notes


def _objective(study) -> str:
    from cnnlab.search.study import FINGERPRINT

    recorded = study.user_attrs.get(FINGERPRINT)
    return str(recorded.get("metric")) if isinstance(recorded, dict) and recorded.get("metric") else "objective value"


def pruned_points(study) -> list[tuple[int, int, float]]:
    """(trial number, epoch it was pruned after, the objective's value then) of each pruned trial that reported one."""
    import optuna

    points = []
    for t in study.trials:
        if t.state != optuna.trial.TrialState.PRUNED or not t.intermediate_values:
            continue
        epoch = t.user_attrs.get("pruned_at_epoch")
        epoch = epoch if isinstance(epoch, int) and epoch in t.intermediate_values else max(t.intermediate_values)
        points.append((t.number, epoch, float(t.intermediate_values[epoch])))
    return points


def history_figure(study):
    """Each completed trial's objective value against its number, the best so far as a step line, and each
    pruned trial at the value it had when it was stopped, marked by the epoch it was pruned after; trial numbers
    are whole numbers on the axis. None when no trial has a value to draw."""
    import optuna

    completed = [(t.number, float(t.value)) for t in study.trials
                 if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None]
    pruned = pruned_points(study)
    if not completed and not pruned:
        return None
    failed = sum(t.state == optuna.trial.TrialState.FAIL for t in study.trials)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 5.5), layout="constrained")
    if completed:
        numbers, values = zip(*completed)
        ax.scatter(numbers, values, color="tab:blue", s=30, zorder=3, label=f"completed ({len(completed)})")
        better = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
        best = [better(values[:i + 1]) for i in range(len(values))]
        last = max(t.number for t in study.trials)
        ax.step([*numbers, last], [*best, best[-1]], where="post", color="tab:red", alpha=0.7,
                label="best completed so far")
    for i, epoch in enumerate(sorted({e for _, e, _ in pruned})):
        at = [(n, v) for n, e, v in pruned if e == epoch]
        ax.scatter(*zip(*at), marker=PRUNED_MARKERS[i % len(PRUNED_MARKERS)], color="tab:orange", s=55, zorder=3,
                   edgecolors="black", linewidths=0.5,
                   label=f"pruned at epoch {epoch} ({len(at)} trial{'s' if len(at) > 1 else ''}): the value then")
    whole_numbers(ax.xaxis, [t.number for t in study.trials])
    ax.set_xlabel("trial number")
    ax.set_ylabel(_objective(study))
    ax.set_title(f"Optimisation history of {study.study_name}: {len(completed)} completed, {len(pruned)} pruned"
                 + (f", {failed} failed (no value)" if failed else "") + f" of {len(study.trials)} trials")
    ax.grid(alpha=0.3)
    entries = len(ax.get_legend_handles_labels()[0])  # below the plot: constrained layout makes room for it
    fig.legend(loc="outside lower center", ncol=min(entries, 3), frameon=False, fontsize=9)
    return fig


def importances_figure(study, minimum: int = MIN_IMPORTANCE_TRIALS):
    """(figure, None) of the parameter importances from the completed trials (pruned and failed ones have no
    objective value and are not used), or (None, the reason) with fewer than `minimum` completed trials or no
    parameter that varies among them."""
    import optuna

    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(completed) < minimum:
        return None, (f"no parameter importances: {len(completed)} completed trial{'s' if len(completed) != 1 else ''}"
                      f", fewer than the {minimum} they need to be more than noise (pruned and failed trials have "
                      f"no objective value); run more trials")
    varying = [name for name in {p for t in completed for p in t.params}
               if len({repr(t.params.get(name)) for t in completed}) > 1]
    if not varying:
        return None, f"no parameter importances: no parameter varies among the {len(completed)} completed trials"
    # seeded: the same study gives the same bars each time it is compared
    importances = optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    names = sorted(importances, key=importances.get)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 1.5 + 0.5 * len(names)), layout="constrained")
    bars = ax.barh(names, [importances[n] for n in names], color="tab:blue")
    ax.bar_label(bars, fmt="%.2f", padding=3)
    ax.set_xlim(0, 1.08)
    ax.set_xlabel(f"importance for {_objective(study)} (fANOVA; the importances sum to 1)")
    ax.set_title(f"Parameter importances from {len(completed)} completed trials of {len(study.trials)} "
                 f"(pruned and failed ones have no value)")
    ax.grid(alpha=0.3, axis="x")
    return fig, None
