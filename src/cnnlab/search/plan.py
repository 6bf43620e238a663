"""From the composed `cnnlab-tune` config to a checked plan and an open study, before any trial runs.

Everything a user can get wrong is checked here and reported at once: the search section's types (the
schema), the space's rules, keys the training config does not have, values at the ends of each range that
the training config refuses, an objective metric that no run logs, an unreachable storage, and a study name
that already holds another search.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import optuna
import yaml
from omegaconf import DictConfig, OmegaConf

from cnnlab.config.compose import config_dir
from cnnlab.errors import ConfigError
from cnnlab.util.masking import masked, masked_argv
from cnnlab.run.rundir import claim_study
from cnnlab.search.database import mask_password
from cnnlab.search.journal import JOURNAL_NAME
from cnnlab.search.locks import study_lock
from cnnlab.search.recovery import recover_interrupted
from cnnlab.search.storage import open_storage
from cnnlab.search.space import Param, config_groups, group_options, has_key, key_problems, parse_space
from cnnlab.search.study import (build_pruner, build_sampler, grid_size, logged_val_metrics, objective_direction,
                                 open_study)
from cnnlab.search.trial import TRIALS_DIR
from cnnlab.search.worker import TrialComposer, WorkerPlan
from cnnlab.run.validate import validate
from cnnlab.config.overrides import override_key, without_hydra

log = logging.getLogger("cnnlab")

STUDY_FILE = "study.yaml"


def plan_search(cfg: DictConfig, command_line: list[str]) -> tuple[WorkerPlan, optuna.Study, bool]:
    """Check the search, open its study and recover the trials of workers that are gone.
    Returns (plan, study, continued: the study existed already)."""
    validate(cfg, "tune")
    search = OmegaConf.to_container(cfg.search, resolve=True)
    groups = config_groups(config_dir()) - {"base", "hydra", "search"}
    params, problems = parse_space(search["space"], groups)
    metric = search["objective"]["metric"] or str(cfg.trainer.monitor)
    logged = logged_val_metrics(cfg.trainer.topk)
    if metric not in logged:
        problems.append(f"search.objective.metric={metric} is not a metric a run logs each epoch; choose one of "
                        f"{', '.join(logged)}")
    if problems:
        raise ConfigError(problems)
    direction = objective_direction(metric, search["objective"]["direction"])

    tune_overrides = without_hydra(command_line)
    # every trial's overrides: the search's, then the command line's training overrides (which win), then the
    # objective as the monitored metric, so checkpoints, early stopping and plateau schedules follow it too
    training = [o for o in tune_overrides if not override_key(o).startswith("search")]
    base_overrides = last_wins([*search["overrides"], *training, f"trainer.monitor={metric}"])
    compose = TrialComposer(tune_overrides)
    base_cfg, problems = _trial_config_problems(compose, base_overrides, params)
    if problems:
        raise ConfigError(problems)

    check_workers(int(search["workers"]))
    study_dir = Path(cfg.paths.output_dir)
    if search["storage"] is None and not (study_dir / JOURNAL_NAME).exists():
        check_trial_dirs(None, search["study_name"], study_dir)  # before the journal file is created
    claim_study(study_dir)  # never a run's dir: their files would mix
    storage = open_storage(search["storage"], study_dir)
    check_trial_dirs(storage, search["study_name"], study_dir)
    n_trials = int(search["n_trials"])
    if search["sampler"]["name"] == "grid" and grid_size(params) is not None and grid_size(params) < n_trials:
        log.info("the grid has %d points: search.n_trials=%d is lowered to it", grid_size(params), n_trials)
        n_trials = grid_size(params)
    max_epochs = int(base_cfg.trainer.max_epochs)
    study, continued = open_study(storage, search["study_name"], params, metric, direction,
                                  build_sampler(search, params), build_pruner(search, max_epochs), base_overrides)
    # a continued study first settles the trials its earlier workers left RUNNING (killed, crashed)
    recover_interrupted(study, bool(search["retry_interrupted"]), study_lock(study_dir, storage))
    _write_study_file(study_dir, search, metric, direction, command_line)
    timeout = search["timeout"]
    plan = WorkerPlan(study_dir, search["study_name"], search["storage"], search, params, tune_overrides,
                      base_overrides, metric, max_epochs, n_trials,
                      None if timeout is None else time.time() + float(timeout))
    return plan, study, continued


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def check_workers(workers: int) -> None:
    """search.workers: at most one worker process per CPU this process may use. Each worker is a whole training
    process; more of them than CPUs only makes every trial slower (and thousands overload the machine)."""
    limit = available_cpus()
    if workers > limit:
        raise ConfigError(f"search.workers={workers}: at most {limit} on this machine (one worker process per CPU "
                          f"it has); trials beyond that would only slow each other down. Use search.workers<={limit}, "
                          f"or share the study with workers on other machines (search.storage)")


def check_trial_dirs(storage, name: str, study_dir: Path) -> None:
    """A study is never started or continued over trial run dirs its storage does not record: an emptied,
    replaced or damaged journal (or another database) would number new trials over finished ones.
    storage None: the journal file is missing."""
    numbered = sorted(int(d.name) for d in (study_dir / TRIALS_DIR).glob("[0-9]*") if d.name.isdigit() and d.is_dir()
                      and any(d.iterdir()))
    if not numbered:
        return
    summaries = ({} if storage is None else
                 {s.study_name: s for s in optuna.get_all_study_summaries(storage, include_best_trial=False)})
    known = summaries[name].n_trials if name in summaries else 0
    unknown = [n for n in numbered if n >= known]
    if not unknown:
        return
    where = (f"the storage {mask_password(url)}" if (url := getattr(storage, "url", None)) else
             f"{study_dir / JOURNAL_NAME}")
    shown = ", ".join(f"{n:04d}" for n in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
    raise ConfigError(
        f"search.study_name={name}: {study_dir / TRIALS_DIR} holds {len(unknown)} trial run dir(s) ({shown}) that "
        f"{where} does not record ({'no such study' if name not in summaries else f'{known} trials'}): it was emptied, "
        f"replaced or damaged, and a new study would number its trials over them. Restore it from a backup to "
        f"continue the study, or move {study_dir} away (its trials stay readable by cnnlab-compare) or choose "
        f"another search.study_name to start a new one")


def last_wins(overrides: list[str]) -> list[str]:
    """The overrides with only the last one of each key kept, in order (a trial's record names each key once)."""
    seen, kept = set(), []
    for o in reversed(overrides):
        key = override_key(o)
        if key not in seen:
            seen.add(key)
            kept.append(o)
    return kept[::-1]


def _trial_config_problems(compose: TrialComposer, base: list[str],
                           params: list[Param]) -> tuple[DictConfig | None, list[str]]:
    """The training config of a trial, checked before any trial runs: with the study's overrides alone, then
    with each end of every range (each choice of a categorical), so a value the sampler may pick that the
    config refuses (a negative lr, an unknown optimizer) is named now, not in trial 17.
    Returns (the config with the study's overrides alone, the problems)."""
    try:
        cfg = compose(base, None)
        validate(cfg)
    except ConfigError as bad:
        return None, [f"search.overrides / the command line: {p}" for p in bad.problems]
    except Exception as bad:  # Hydra refused an override (an unknown group option, a key not in the tree)
        return None, [f"search.overrides={base}: {str(bad).splitlines()[0]}"]
    variants, problems = [cfg], []
    for p in params:
        if p.group:
            options = group_options(config_dir(), p.key)
            for choice in p.distribution.choices:
                if choice not in options:
                    continue  # named by key_problems below
                try:
                    variants.append(validated(compose([*base, p.override(choice)], None)))
                except ConfigError as bad:
                    problems.append(f"search.space.{p.name}: with {p.override(choice)}, {bad.problems[0]}")
    problems += key_problems(params, variants, lambda group: group_options(config_dir(), group))
    bad_keys = {line.split(".key=")[0] for line in problems}
    for p in params:
        if p.group or f"search.space.{p.name}" in bad_keys or not has_key(cfg, p.key):
            continue  # a key only some group choices have (optimizer.momentum) is checked by its trials
        for value in p.ends():
            override = p.override(value)
            try:
                validate(compose([*base, override], None))
            except ConfigError as bad:
                problems.append(f"search.space.{p.name}: with {override}, {bad.problems[0]}")
            except Exception as bad:
                problems.append(f"search.space.{p.name}: with {override}, {str(bad).splitlines()[0]}")
    return cfg, problems


def validated(cfg: DictConfig) -> DictConfig:
    validate(cfg)
    return cfg


def _write_study_file(study_dir: Path, search: dict, metric: str, direction: str, command_line: list[str]) -> None:
    """study.yaml: what cnnlab-compare needs to open the study, and how it was started."""
    # the storage's password is not written (cnnlab-compare is given the URL with --storage)
    record = {"study_name": search["study_name"], "storage": masked(search["storage"]), "metric": metric,
              "direction": direction, "command": masked_argv(["cnnlab-tune", *command_line])}
    study_dir.mkdir(parents=True, exist_ok=True)
    (study_dir / STUDY_FILE).write_text(yaml.safe_dump(record, sort_keys=False))
