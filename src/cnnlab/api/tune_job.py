"""`cnnlab.tune(...)`: `cnnlab-tune <overrides>` as its Hydra job (the study dir outputs/search/<study_name> with
tune.log, study.yaml, the journal, one training run per trial and the summary), by the command's own code
(cnnlab.experiments.tuning.search); returns the Optuna study."""

from __future__ import annotations

from cnnlab.api.jobs import run_job
from cnnlab.api.training_job import overrides_of
from cnnlab.config.compose import config_dir
from cnnlab.config.overrides import check_override_keys
from cnnlab.errors import ConfigError, RunError
from cnnlab.run import precheck


def tune(*overrides: str, **keys):
    """Run the search `cnnlab-tune <the same overrides>` runs, trials one after another in this process
    (search.workers=N starts N worker processes, as the command does), and return its optuna.Study:

        study = cnnlab.tune("search=lenet_lr_wd_bs", "search.n_trials=20", max_epochs=3)
        study.best_params, study.best_value, study.trials_dataframe()

    Keyword arguments as for cnnlab.train. Calling it again with the same search.study_name continues the study,
    as running the command again does."""
    from cnnlab.config.compose import hydra_overrides
    from cnnlab.experiments.tuning import search
    from cnnlab.search.plan import check_workers

    args = overrides_of(overrides, keys)
    try:
        check_override_keys(args, config_dir(), "tune")
        precheck.check_output_location(args)
        cfg = precheck.check_config(args, "tune")  # before Hydra creates the study dir and tune.log
        if cfg is not None:
            check_workers(int(cfg.search.workers))
        return run_job("tune", "tune", args, lambda job_cfg: search(job_cfg, hydra_overrides()),
                       argv=["cnnlab.tune", *args])
    except (ConfigError, RunError) as bad:
        raise bad.with_traceback(None) from None
