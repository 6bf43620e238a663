"""`cnnlab-lab <lesson>`: run one lesson of the CNN course and write its page (a table, plots, and what the
result shows). Lessons are configs/lab/<lesson>.yaml; pages live in docs/lab/.

    cnnlab-lab --list                          # the lessons
    cnnlab-lab optimizers                      # 3 seeds per arm; runs and page in outputs/lab/optimizers/
    cnnlab-lab optimizers --quick              # a seconds-long smoke run (one seed, a few steps): .../optimizers-quick/
    cnnlab-lab optimizers --out runs           # runs and page in runs/optimizers/ (each lesson its own folder)
    cnnlab-lab optimizers trainer.max_epochs=4 # any training override, applied to every arm (last wins)
    cnnlab-lab optimizers --page docs/lab      # write the page where the docs keep it
    cnnlab-lab optimizers --page docs/lab --page-only   # the page again from those runs (no training)
    cnnlab-lab --index docs/lab                # docs/lab/README.md: the index of lessons and pages
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from cnnlab.cli.common import reports_config_errors
from cnnlab.errors import ConfigError
from cnnlab.lab.lesson_job import console_progress, run_and_write
from cnnlab.lab.lessons import lesson_names, load_lesson

log = logging.getLogger("cnnlab.lab")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="cnnlab-lab", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("lesson", nargs="?", help="the lesson to run (see --list)")
    parser.add_argument("overrides", nargs="*", help="cnnlab-train overrides for every run of the lesson")
    parser.add_argument("--quick", action="store_true", help="smoke run: one seed, a few steps per arm")
    parser.add_argument("--out", metavar="DIR", help="where the runs go: DIR/<lesson>[-quick] (default DIR: outputs/lab)")
    parser.add_argument("--page", metavar="DIR", help="where the page and its img/ go (default: the lesson's folder "
                                                      "DIR/<lesson>[-quick])")
    parser.add_argument("--page-only", action="store_true",
                        help="write the page again from the runs already in --out (no training)")
    parser.add_argument("--list", action="store_true", help="list the lessons and exit")
    parser.add_argument("--index", metavar="DIR", help="write DIR/README.md, the index of lessons, and exit")
    return parser.parse_intermixed_args(argv)  # overrides may come before or after the options


@reports_config_errors
def main(argv: list[str] | None = None) -> None:
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.list:
        for name in lesson_names():
            print(f"{name:22s} {load_lesson(name).title}")
        return
    if args.index:
        from cnnlab.lab.index import write_index

        print(write_index(Path(args.index).expanduser()))
        return
    if not args.lesson:
        raise ConfigError(f"name a lesson: {', '.join(lesson_names())}")
    lesson = load_lesson(args.lesson)
    # the overrides are checked before anything runs: a typo is named with the closest key
    from cnnlab.cli.common import check_command_line

    check_command_line(list(args.overrides), "tune" if lesson.extra == "search" else "train")
    restore = console_progress()
    try:
        _run(lesson, args)
    finally:
        restore()


def _run(lesson, args) -> None:
    page = run_and_write(lesson, Path(args.out or "outputs/lab"), args.quick, list(args.overrides),
                         Path(args.page) if args.page else None, args.page_only)
    if args.page_only:
        print(page)


if __name__ == "__main__":
    main()
