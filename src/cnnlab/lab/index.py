"""docs/lab/README.md: every lesson with its question, its command, and a link to its recorded page.

An existing README.md is replaced only when it is an index this wrote (it starts with INDEX_TITLE and has the
REGENERATE line); any other file there is refused and left as it is."""

from __future__ import annotations

from pathlib import Path

from cnnlab.lab.lessons import lesson_names, load_lesson
from cnnlab.lab.page import measured_minutes
from cnnlab.util.outpaths import check_target, read_text, write_atomic

INDEX_TITLE = "# Lab book"
REGENERATE = "Regenerate this index with `cnnlab-lab --index"


def index_is_ours(path: Path) -> bool:
    text = read_text(path)
    if text is None:
        return False
    return text.startswith(INDEX_TITLE + "\n") and REGENERATE in text


def check_index_target(page_dir: Path, key: str) -> Path:
    return check_target(Path(page_dir).expanduser() / "README.md", key, "cnnlab-lab --index", index_is_ours,
                        "it is not a lab index cnnlab-lab wrote")


def write_index(page_dir: Path) -> Path:
    path = check_index_target(page_dir, f"--index={page_dir}")
    page_dir = path.parent
    lines = [INDEX_TITLE, "",
             "Each lesson of the CNN course as one command that trains the compared settings (3 seeds each), writes",
             "a table of mean ± std and the learning curves, and says what the result shows and where it differs",
             "from the textbook. Lessons are `configs/lab/<lesson>.yaml`; `--quick` runs any of them in seconds;",
             "training overrides compose with any lesson (`cnnlab-lab optimizers trainer.max_epochs=4`). A page's",
             "Setup shows the settings its runs ran with: `--quick`'s overrides and the command line's in place of",
             "the lesson's they replace. A `--quick` page is a smoke test: it says so above its results, which are",
             "not the lesson's and not to be compared with the textbook, and its one-epoch curves are single points.",
             "Minutes are those of the recorded run on 2 CPU cores, with the load average at its end (2 is the",
             "lesson's own two threads; more means other jobs shared the cores and the minutes are an upper bound).",
             "", "| lesson | question | command | minutes | page |", "|---|---|---|---|---|"]
    for name in lesson_names():
        lesson = load_lesson(name)
        page = page_dir / f"{name}.md"
        link = f"[{name}.md]({name}.md)" if page.is_file() else "not recorded yet"
        minutes = (measured_minutes(page) if page.is_file() else None) or ""
        question = " ".join(lesson.question.split())
        lines.append(f"| {lesson.title} | {question} | `cnnlab-lab {name} --page docs/lab` | {minutes} | {link} |")
    lines += ["", f"{REGENERATE} docs/lab`.", ""]
    return write_atomic(path, "\n".join(lines))
