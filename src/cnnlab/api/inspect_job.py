"""`cnnlab.summary(...)`: `cnnlab-summary <overrides>` (the architecture inspector's report, before any training) as
its Hydra job, by the command's own code (cnnlab.run.inspection); the report comes back as a ModelSummary."""

from __future__ import annotations

import html

from cnnlab.api.jobs import run_job
from cnnlab.api.training_job import overrides_of
from cnnlab.config.compose import config_dir
from cnnlab.config.overrides import check_override_keys
from cnnlab.errors import ConfigError


class ModelSummary:
    """The inspector's report (cnnlab.models.inspector.layer_report.Summary: layers, params, macs, receptive_field,
    ... as attributes) with its text as cnnlab-summary prints it; a notebook cell shows that text."""

    def __init__(self, summary, text: str):
        self.summary, self.text = summary, text

    def __getattr__(self, name: str):
        if name in ("summary", "text"):  # not set yet (a copy being built): no recursion
            raise AttributeError(name)
        return getattr(self.summary, name)

    def __str__(self) -> str:
        return self.text

    __repr__ = __str__

    def _repr_html_(self) -> str:
        return f"<pre>{html.escape(self.text)}</pre>"


def summary(*overrides: str, **keys) -> ModelSummary:
    """The report `cnnlab-summary <overrides>` prints for the model `cnnlab.train(<the same arguments>)` would
    train: one row per layer, then the totals. format="json" (an override string: "format=json") gives the JSON
    text; "output=<file>" also writes it."""
    from cnnlab.run.inspection import check_group_choices, summarize_config

    args = overrides_of(overrides, {k: v for k, v in keys.items() if k != "dir"})
    if "dir" in keys:
        raise TypeError("summary() writes no run dir: its keyword dir is not taken")
    try:
        check_group_choices(args)
        check_override_keys(args, config_dir(), "summary")
        built = run_job("summary", "summary", args, summarize_config, argv=["cnnlab.summary", *args], own_dir=False)
    except ConfigError as bad:
        raise bad.with_traceback(None) from None
    return ModelSummary(*built)
