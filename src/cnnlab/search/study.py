"""The Optuna study of a search: sampler, pruner, direction, and the check that a continued study is the same one.

A study records what it searches (the space, the objective metric and its direction) in its user attributes
when it is created. Running `cnnlab-tune` again with the same study name continues it; the same name with
another space or direction is refused, because Optuna would mix trials of two different questions.
"""

from __future__ import annotations

import json

import optuna
from optuna.distributions import distribution_to_json

from cnnlab.engine.early_stopping import resolve_monitor_mode
from cnnlab.errors import ConfigError
from cnnlab.search.space import Param
from cnnlab.config.overrides import override_key

FINGERPRINT = "cnnlab_search"  # study user attr: {"space": ..., "metric": ..., "direction": ..., "training": ...}
# Overrides that change how a run is shown or where it is written, not how it trains: a continued study may
# change them.
NOT_TRAINING = ("paths.", "logger.", "trainer.progress", "trainer.summary", "hydra.")


def objective_direction(metric: str, direction: str) -> str:
    """maximize | minimize; `auto` follows the metric like trainer.monitor_mode=auto (accuracies up, losses down)."""
    if direction != "auto":
        return direction
    return "maximize" if resolve_monitor_mode(metric, "auto") == "max" else "minimize"


def logged_val_metrics(topk) -> list[str]:
    """The validation metrics every epoch of a run logs (what a trial can report), for trainer.topk."""
    return ["val/loss", *[("val/acc" if int(k) == 1 else f"val/acc_top{int(k)}") for k in topk]]


def build_sampler(search: dict, params: list[Param], stream: int = 0) -> optuna.samplers.BaseSampler:
    """The sampler of search.sampler, seeded from search.seed and `stream`.

    stream: which worker, and how many trials the study had when it started. A continued study or a second
    worker with the very same seed would draw the same random values again as the first trials did.
    """
    name = search["sampler"]["name"]
    seed = (int(search["seed"]) + 1_000_003 * stream) % 2**32
    if name == "grid":
        grid = {p.name: p.grid() for p in params}
        continuous = [n for n, values in grid.items() if values is None]
        if continuous:
            raise ConfigError(f"search.sampler.name=grid needs every parameter to have finitely many values: give "
                              f"{', '.join('search.space.' + n for n in continuous)} a step, or make it categorical")
        return _Grid(grid, seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=int(search["sampler"]["n_startup_trials"]))


class _Grid(optuna.samplers.GridSampler):
    """GridSampler without its `study.stop()` once the grid is covered: that works only inside study.optimize,
    and the trial budget (n_trials, lowered to the grid's size) already ends the search."""

    def after_trial(self, study, trial, state, values) -> None:
        pass


def build_pruner(search: dict, max_epochs: int) -> optuna.pruners.BasePruner:
    p = search["pruner"]
    if p["name"] == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=int(p["n_startup_trials"]),
                                           n_warmup_steps=int(p["min_resource"]))
    if p["name"] == "hyperband":
        # resources are epochs: every trial trains at least min_resource epochs and at most max_epochs
        return optuna.pruners.HyperbandPruner(min_resource=int(p["min_resource"]), max_resource=max_epochs,
                                              reduction_factor=int(p["reduction_factor"]))
    if p["name"] == "asha":
        # one bracket of asynchronous successive halving: rungs at min_resource * reduction_factor**(k + rate);
        # a trial goes on past a rung when it is in the top 1/reduction_factor of the trials that reached it so
        # far, so no worker ever waits for a rung to fill
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=int(p["min_resource"]), reduction_factor=int(p["reduction_factor"]),
            min_early_stopping_rate=int(p.get("min_early_stopping_rate", 0)))
    return optuna.pruners.NopPruner()


def grid_size(params: list[Param]) -> int | None:
    size = 1
    for p in params:
        values = p.grid()
        if values is None:
            return None
        size *= len(values)
    return size


def training_overrides(overrides: list[str]) -> dict[str, str]:
    """The overrides every trial trains with, by key (those of NOT_TRAINING left out)."""
    kept = {}
    for o in overrides:
        key = override_key(o)
        if not any(key == n.rstrip(".") or key.startswith(n) for n in NOT_TRAINING):
            kept[key] = o
    return kept


def fingerprint(params: list[Param], metric: str, direction: str, training: list[str] = ()) -> dict:
    return {"space": {p.name: {"key": p.key, "distribution": json.loads(distribution_to_json(p.distribution))}
                      for p in params},
            "metric": metric, "direction": direction, "training": training_overrides(list(training))}


def open_study(storage, name: str, params: list[Param], metric: str, direction: str,
               sampler, pruner, training: list[str] = ()) -> tuple[optuna.Study, bool]:
    """Create the study, or load it if it exists and searches the same space for the same objective with the
    same training overrides (`training`: every trial's overrides before its own values). Returns (study,
    continued)."""
    wanted = fingerprint(params, metric, direction, training)
    existing = {s.study_name: s for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    if name in existing:
        found = existing[name].user_attrs.get(FINGERPRINT)
        if found is not None and "training" not in found:  # recorded before training overrides were
            found = {**found, "training": wanted["training"]}
        if found is not None and found != wanted:
            if _same_question(found, wanted):
                raise ConfigError(
                    f"search.study_name={name}: this study's trials were trained with other overrides "
                    f"({_training_difference(found['training'], wanted['training'])}); its trials would be "
                    f"ranked side by side although trained differently. Continue it with the same training "
                    f"overrides (study.yaml in the study dir records its command), or choose another "
                    f"search.study_name to start a new study with these")
            raise ConfigError(f"search.study_name={name}: this study exists with {_difference(found, wanted)}; "
                              f"a study answers one question. Choose another search.study_name for the new "
                              f"space, or run the old search again to continue it")
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
        if found != existing[name].user_attrs.get(FINGERPRINT):
            study.set_user_attr(FINGERPRINT, wanted)
        return study, True
    study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner,
                                direction=direction, load_if_exists=True)
    if study.user_attrs.get(FINGERPRINT) is None:
        study.set_user_attr(FINGERPRINT, wanted)
    return study, False


def _same_question(found: dict, wanted: dict) -> bool:
    return all(found.get(k) == wanted[k] for k in ("space", "metric", "direction"))


def _training_difference(old: dict, new: dict) -> str:
    """'trainer.max_epochs=1 then, trainer.max_epochs=2 now; optimizer=adam now only'"""
    parts = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) == new.get(key):
            continue
        if key not in new:
            parts.append(f"{old[key]} then, not now")
        elif key not in old:
            parts.append(f"{new[key]} now, not then")
        else:
            parts.append(f"{old[key]} then, {new[key]} now")
    return "; ".join(parts)


def _difference(found: dict, wanted: dict) -> str:
    if found.get("direction") != wanted["direction"] or found.get("metric") != wanted["metric"]:
        return (f"objective {found.get('metric')} ({found.get('direction')}), not {wanted['metric']} "
                f"({wanted['direction']})")
    old, new = found.get("space", {}), wanted["space"]
    changed = sorted(set(old) ^ set(new)) + sorted(k for k in set(old) & set(new) if old[k] != new[k])
    return f"another search space (parameters that differ: {', '.join(changed)})"
