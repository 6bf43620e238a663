"""`cnnlab.lab(lesson)`: `cnnlab-lab <lesson>` in this process: the lesson's arms x seeds trained under
outputs/lab/<lesson>[-quick] and its page written there (cnnlab.lab.lesson_job); returns the page, which a notebook
shows as Markdown."""

from __future__ import annotations

from pathlib import Path

from cnnlab.api.jobs import logging_kept, process_settings_kept
from cnnlab.api.training_job import overrides_of
from cnnlab.config.compose import config_dir
from cnnlab.config.overrides import check_override_keys
from cnnlab.errors import ConfigError, RunError


class LabPage:
    """A lesson's page (Markdown with its plots in img/ beside it): `path`, `dir` (the lesson's folder or
    --page's), `text`; a notebook cell shows the Markdown."""

    def __init__(self, path: Path):
        self.path = Path(path).resolve()
        self.dir = self.path.parent

    @property
    def text(self) -> str:
        return self.path.read_text()

    def __repr__(self) -> str:
        return f"LabPage({str(self.path)!r})"

    def _repr_markdown_(self) -> str:
        return self.text


def lab(lesson: str, *overrides: str, quick: bool = False, out: str | Path = "outputs/lab",
        page: str | Path | None = None, page_only: bool = False, **keys) -> LabPage:
    """Run the lab book's `lesson` (cnnlab-lab --list names them) as `cnnlab-lab <lesson>` does and return its page:

        page = cnnlab.lab("optimizers", quick=True)

    `quick`: one seed and a few steps per arm (--quick); `out`: where the lesson's folder goes (--out); `page`:
    where the page goes instead of that folder (--page); `page_only`: the page again from the runs already there.
    Overrides and keyword arguments (as for cnnlab.train) apply to every arm."""
    from cnnlab.lab.lesson_job import console_progress, run_and_write
    from cnnlab.lab.lessons import load_lesson

    args = overrides_of(overrides, keys)
    try:
        chosen = load_lesson(lesson)
        check_override_keys(args, config_dir(), "tune" if chosen.extra == "search" else "train")
        with logging_kept(), process_settings_kept():  # the lab's progress lines in the cell, as on the console
            console_progress()
            written = run_and_write(chosen, Path(out), quick, args, Path(page) if page else None, page_only)
    except (ConfigError, RunError) as bad:
        raise bad.with_traceback(None) from None
    return LabPage(written)
