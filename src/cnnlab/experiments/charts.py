"""PNG plots of runs and studies (matplotlib, Agg backend): overlaid validation curves, and a study's
optimisation history and parameter importances drawn by Optuna."""

from __future__ import annotations

import warnings
from pathlib import Path

from cnnlab.run.records import RunRecord, read_curve
from cnnlab.util.plotting import pyplot, save

LINE_STYLES = ("-", "--", ":", "-.")


def plot_curves(records: list[RunRecord], labels: list[str], tag: str, path: Path) -> Path | None:
    """One line per run of `tag` against the epoch, the legend naming each run; None when no run logged it.
    20 colours, then the same colours dashed, dotted...: about 30 runs stay distinguishable."""
    curves = [(label, read_curve(r.run_dir, tag)) for r, label in zip(records, labels)]
    curves = [(label, points) for label, points in curves if points]
    if not curves:
        return None
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator  # with pyplot, above

    colours = plt.get_cmap("tab20" if len(curves) > 10 else "tab10").colors
    # A two-column legend beyond 20 runs needs room of its own: widen the figure rather than shrink the plot.
    fig, ax = plt.subplots(figsize=(10 if len(curves) <= 20 else 14, 5.5), layout="constrained")
    for i, (label, points) in enumerate(curves):
        epochs, values = zip(*points)
        ax.plot(epochs, values, label=label, color=colours[i % len(colours)],
                linestyle=LINE_STYLES[(i // len(colours)) % len(LINE_STYLES)], marker="o" if len(epochs) < 15 else None,
                markersize=3, linewidth=1.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(tag)
    ax.set_title(f"{tag} per epoch ({len(curves)} runs)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8 if len(curves) <= 15 else 6.5,
              ncol=1 if len(curves) <= 20 else 2, frameon=False)
    return save(fig, path)


def plot_study(study, out_dir: Path) -> tuple[list[Path], list[str]]:
    """Optuna's optimisation history and parameter importances as PNGs; returns (files, notes on what was
    skipped). Importances need two completed trials whose parameters vary."""
    import optuna  # only studies are drawn with it

    pyplot()  # the Agg backend, before Optuna's matplotlib module draws
    files, notes = [], []
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not completed:
        return files, ["no optimisation history: the study has no completed trial"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # the matplotlib backend is marked so
        ax = optuna.visualization.matplotlib.plot_optimization_history(study)
        files.append(_save_optuna(ax, Path(out_dir) / "optimization_history.png"))
        varying = [name for name in {p for t in completed for p in t.params}
                   if len({repr(t.params.get(name)) for t in completed}) > 1]
        if len(completed) >= 2 and varying:
            ax = optuna.visualization.matplotlib.plot_param_importances(study)
            files.append(_save_optuna(ax, Path(out_dir) / "param_importances.png"))
        else:
            notes.append("no parameter importances: they need at least 2 completed trials whose parameters vary "
                         f"({len(completed)} completed)")
    return files, notes


def _save_optuna(ax, path: Path) -> Path:
    """Optuna draws on a figure of its own size: ours, then saved."""
    fig = ax.figure
    fig.set_size_inches(9, 5)
    fig.tight_layout()
    return save(fig, path)
