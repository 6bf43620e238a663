"""`cnnlab-summary model=<name> data=<name>`: the architecture inspector's report, before any training.

One row per layer in execution order (name, type, kernel/stride/padding, output shape, trainable and frozen
parameters, multiply-accumulates, receptive field and jump), then totals: parameters, MACs, activation
memory for one sample, model size, receptive field. `--json` (or format=json) prints the same as JSON.

The config is composed exactly as for cnnlab-train (configs/summary.yaml includes train.yaml), so any
training command line can be inspected by swapping the command. The model is built on the meta device and
the data set is never loaded: its shape comes from the data config.

output=FILE replaces an existing file only when it is an earlier summary (a JSON summary with input_shape,
layers and totals, or a table whose first line is "<model> on a CxHxW input"); anything else is refused
before the model is built, and left as it is.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from cnnlab.cli.common import reports_config_errors
from cnnlab.config.compose import CONFIG_DIR
from cnnlab.config.overrides import check_override_keys
from cnnlab.run import inspection
from cnnlab.run.inspection import build_summary, run_summary, summary_input  # noqa: F401  (what callers import)

check_group_choices = reports_config_errors(inspection.check_group_choices)


@hydra.main(config_path=CONFIG_DIR, config_name="summary", version_base="1.3")
@reports_config_errors
def _hydra_main(cfg: DictConfig) -> None:
    run_summary(cfg)


@reports_config_errors
def main() -> None:
    sys.argv = [("format=json" if arg == "--json" else arg) for arg in sys.argv]
    check_group_choices(sys.argv[1:])
    check_override_keys(sys.argv[1:], Path(CONFIG_DIR), "summary")
    _hydra_main()


if __name__ == "__main__":
    main()
