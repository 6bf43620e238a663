"""`cnnlab-eval ckpt=<checkpoint or run dir>`: test a trained model on a split, from its own saved config.

Reports loss, top-1/top-k accuracy, per-class accuracy and the confusion matrix; writes them to
eval_metrics.json in this command's own output dir. Overrides (e.g. data.eval_batch_size=1000,
trainer.device=cpu, split=val) are applied on top of the run's saved config.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from cnnlab.cli.common import check_command_line, reports_config_errors
from cnnlab.config.compose import CONFIG_DIR
from cnnlab.errors import ConfigError
from cnnlab.config.checks import command_key_problems
from cnnlab.config.overrides import override_key, split_override, without_hydra
from cnnlab.run.scoring import EVAL_KEYS, evaluate  # noqa: F401  (what callers import)


@hydra.main(config_path=CONFIG_DIR, config_name="eval", version_base="1.3")
@reports_config_errors
def _hydra_main(cfg: DictConfig) -> None:
    evaluate(cfg)


@reports_config_errors
def main() -> None:
    check_command_line(sys.argv[1:], "eval")
    check_eval_command_line(sys.argv[1:])
    _hydra_main()


@reports_config_errors
def check_eval_command_line(args: list[str]) -> None:
    """Before Hydra creates this command's run dir and its log: ckpt= is given and names something that exists,
    and this command's own keys (split, tta, ...) are valid. The rest of the config is complete only once the
    checkpoint is read (evaluate, before the run dir is claimed). stat() only: the checkpoint is read once."""
    from cnnlab.config.compose import compose_config
    from cnnlab.util.outpaths import file_kind

    if any(a in ("-m", "--multirun") for a in args):
        return  # each job checks its own
    given = [split_override(a)[1] for a in args if override_key(a) == "ckpt"]
    if not given:
        raise ConfigError("ckpt is required: cnnlab-eval ckpt=<a checkpoint file, or a run dir (its best.ckpt, "
                          "else last.ckpt)>")
    if "${" not in given[-1] and file_kind(Path(given[-1]).expanduser()) == "missing":
        raise ConfigError(f"ckpt={given[-1]}: no such file or directory")
    try:
        cfg = compose_config(without_hydra(args), "unused", "eval")
    except ConfigError:
        raise
    except Exception:  # an override Hydra itself refuses: its own message, from Hydra
        return
    problems = command_key_problems(cfg, "eval")
    if problems:
        raise ConfigError(problems)


if __name__ == "__main__":
    main()
