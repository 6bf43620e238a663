"""The checklist, in the order a network that won't train is best examined: the data, then the model's first
step, then whether it can learn at all, then how fast, then how gradients flow.

A check that raises becomes a FAIL naming the error: the rest of the report still runs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from cnnlab.diagnose import checks_data, checks_gradients, checks_training
from cnnlab.diagnose.report import Check
from cnnlab.diagnose.subject import Subject
from cnnlab.engine.seeding import seed_everything

log = logging.getLogger("cnnlab")

CHECKS = (
    ("class balance", checks_data.class_balance),
    ("input statistics", checks_data.input_statistics),
    ("duplicates across splits", checks_data.duplicates),
    ("sample grid", checks_data.sample_grid),
    ("output layer", checks_training.output_layer),
    ("initial loss", checks_training.initial_loss),
    ("overfit one batch", checks_training.overfit),
    ("learning-rate range", checks_training.lr_range),
    ("gradient flow", checks_gradients.gradient_checks),
)


@dataclass
class Workspace:
    """Where checks put their plots (files, and TensorBoard images when a writer is given) and what one check
    leaves for another (the scanned splits)."""

    out_dir: Path
    writer: object = None   # a torch SummaryWriter, or None
    shared: dict = field(default_factory=dict)

    def path(self, name: str) -> Path:
        return Path(self.out_dir) / name

    def figure(self, tag: str, png: Path) -> None:
        if self.writer is None:
            return
        import matplotlib.image  # heavy: only when TensorBoard is on

        image = matplotlib.image.imread(str(png))[..., :3]  # RGBA -> RGB, floats in [0, 1]
        self.writer.add_image(f"doctor/{tag}", image, 0, dataformats="HWC")


def run_checklist(subject: Subject, work: Workspace, only: tuple[str, ...] | None = None) -> list[Check]:
    """Run every check (or those named in `only`), each on its own copies; returns their Checks in order."""
    checks: list[Check] = []
    for name, check in CHECKS:
        if only is not None and name not in only:
            continue
        started = time.perf_counter()
        seed_everything(subject.seed)
        try:
            found = check(subject, work)
        except Exception as bad:  # a broken setup can break a check: that is a finding, not a crash
            log.debug("check %s failed", name, exc_info=True)
            found = Check(name, "FAIL", f"the check could not run: {type(bad).__name__}: {bad}".strip(),
                          advice="fix this error first: training would hit it too")
        found = found if isinstance(found, list) else [found]
        for c in found:
            c.seconds = round((time.perf_counter() - started) / len(found), 3)
        checks += found
    return checks
