"""Run.evaluate: `cnnlab-eval ckpt=<run dir> split=... tta=...` as its Hydra job (config eval.yaml, its own run dir
under outputs/eval/, evaluate.log), by the command's own code (cnnlab.run.scoring.evaluate)."""

from __future__ import annotations

import logging
from pathlib import Path

from cnnlab.api.jobs import quoted, run_job
from cnnlab.config.compose import config_dir
from cnnlab.config.overrides import check_override_keys
from cnnlab.errors import ConfigError, RunError
from cnnlab.run import precheck

log = logging.getLogger("cnnlab")


def _evaluate(cfg) -> dict:
    from cnnlab.run.scoring import evaluate as evaluate_run

    try:
        return evaluate_run(cfg)
    except (ConfigError, RunError) as bad:  # as the command reports them: in the console and evaluate.log
        log.error("error: %s", bad)
        raise


def evaluate(run_dir: Path, split: str, tta: str, overrides: list[str]) -> dict:
    args = [f"ckpt={quoted(run_dir)}", f"split={quoted(split)}", f"tta={quoted(tta)}", *overrides]
    try:
        check_override_keys(args, config_dir(), "eval")
        precheck.check_output_location(args)
        return run_job("eval", "evaluate", args, _evaluate, argv=["cnnlab.Run.evaluate", *args])
    except (ConfigError, RunError) as bad:
        raise bad.with_traceback(None) from None
