"""cnnlab-lab: every lesson runs as a seconds-long smoke run (--quick) and writes its page, its table and its
plots; an unknown lesson lists the valid ones; overrides compose with any lesson."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cnnlab.errors import ConfigError
from cnnlab.cli.lab import main
from cnnlab.lab.lessons import lesson_names, load_lesson

LESSONS = lesson_names()
# Their smoke runs still build big models (ResNet-56, GoogLeNet, AlexNet), run cnnlab-doctor per arm, train a source
# model first or start cnnlab-tune three times: tens of seconds each on two cores, so they run with -m slow.
# filters and learning_rate start cnnlab-explain / cnnlab-doctor as commands (10-35 s).
HEAVY = {"activations", "alexnet_ablation", "densenet_vs_resnet", "depth", "googlenet_aux", "search", "transfer",
         "filters", "learning_rate"}
# The other lessons are alike (a few arms of small models on mnist_sample, a page with a table and curves): the
# default run keeps losses and lenet; these run with -m slow.
ALIKE = {"optimizers", "regularization", "pooling", "vgg_kernels", "early_stopping"}


def test_the_lab_has_the_course_lessons():
    assert {"optimizers", "learning_rate", "activations", "regularization", "early_stopping", "losses", "pooling",
            "lenet", "alexnet_ablation", "vgg_kernels", "depth", "densenet_vs_resnet", "googlenet_aux", "transfer",
            "search", "filters"} <= set(LESSONS)
    for name in LESSONS:
        lesson = load_lesson(name)
        compares = len(lesson.arms) > 1 and lesson.extra != "filters"
        assert not compares or len(lesson.seeds) >= 3, f"{name}: a comparison needs at least 3 seeds"


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY | ALIKE else n
                                  for n in LESSONS])
def test_each_lesson_runs_quick_and_writes_its_page(tmp_path, name):
    lesson = load_lesson(name)
    from matplotlib.figure import Figure

    from cnnlab.visualize.figures import save_png

    own = tmp_path / "out" / f"{name}-quick"  # the lesson's own folder under --out
    stale = own / "img" / f"{name}_a_curve_no_longer_shown.png"  # from an earlier version of the page
    save_png(Figure(figsize=(1, 1)), stale)  # cnnlab's picture (its PNG mark): the page may remove it
    main([name, "--quick", "--out", str(tmp_path / "out")])
    assert not stale.exists()
    page = (own / f"{name}.md").read_text()
    assert page.startswith(f"# {lesson.title}")
    assert f"cnnlab-lab {name} --quick" in page and "Quick smoke run" in page
    rows = [line for line in page.splitlines() if line.startswith("| `")]
    table_rows = [r for r in rows if r.count("|") == len(lesson.columns) + 2]
    assert [re.match(r"\| `([^`]+)`", r).group(1) for r in table_rows] == list(lesson.arms)
    assert all("failed" not in r for r in table_rows), table_rows  # every arm produced its numbers
    images = re.findall(r"!\[[^\]]*\]\(img/([^)]+)\)", page)
    expected = len(lesson.curves) + (1 if lesson.series else 0) + (1 if lesson.extra in ("lr_finder", "gradients") else 0)
    assert len(images) >= expected
    for image in images:
        assert (own / "img" / image).stat().st_size > 1000  # a real PNG
    # the settings that ran: --quick's on top of the lesson's, and the page says it is no result to compare
    setup = page.split("## Setup", 1)[1].split("## Results", 1)[0]
    every_run = next(line for line in setup.splitlines() if line.startswith("Every run"))
    assert all(o in every_run for o in lesson.quick)
    quick_keys = {o.split("=", 1)[0] for o in lesson.quick}
    assert not [o for o in lesson.common if o.split("=", 1)[0] in quick_keys and o not in lesson.quick
                and o in every_run.split("`")[1].split()]
    results = page.split("## Results", 1)[1]
    assert results.lstrip().startswith("**Smoke run (`--quick`") and "not to be compared with" in results
    if name == "lenet":  # one epoch of 3 batches: its curves are points, and the page and the plot say so
        assert "`--quick` set `trainer.max_epochs=1 trainer.limit_train_batches=3` and one seed, on top of the " \
               "lesson's settings (replacing `trainer.max_epochs=8`)." in setup
        assert "trainer.max_epochs=8" not in every_run
        assert 'Every run trained one epoch, so each "curve" above is a single point per arm' in page
        assert "the smoke run's numbers above cannot confirm or contradict it" in page


def test_the_setup_shows_the_overrides_on_top_in_place_of_those_they_replace():
    from cnnlab.lab.arms import ArmResult, LessonResult
    from cnnlab.lab.page import applied, setup_lines

    assert applied(["a=1", "b=2", "+c=3"], ["b=5", "d=4", "c=6", "d=7"]) == ["a=1", "b=5", "c=6", "d=7"]
    lesson = load_lesson("lenet").model_copy(update={"arms": {"x": ["trainer.max_epochs=20", "model.pool=max"]}})
    result = LessonResult(lesson, Path("."), True, [ArmResult("x", ["trainer.max_epochs=20", "model.pool=max"])])
    lines = setup_lines(result, ["optimizer.lr=0.02"])
    assert lines[0] == ("Every run: `data=mnist_sample model=lenet5 augment=none optimizer=sgd optimizer.lr=0.02 "
                        "optimizer.momentum=0.9 optimizer.weight_decay=0.0 scheduler=none trainer.max_epochs=1 "
                        "trainer.limit_train_batches=3`")
    assert lines[2] == ("`--quick` set `trainer.max_epochs=1 trainer.limit_train_batches=3` and one seed and the "
                        "command line set `optimizer.lr=0.02`, on top of the lesson's settings (replacing "
                        "`optimizer.lr=0.05 trainer.max_epochs=8 trainer.max_epochs=20`).")
    assert lines[-1] == "| `x` | `trainer.max_epochs=1 model.pool=max` |"  # the arm's 20 epochs did not run
    full = setup_lines(LessonResult(lesson, Path("."), False, result.arms), [])
    assert full[0].endswith("trainer.max_epochs=8`") and full[-1] == "| `x` | `trainer.max_epochs=20 model.pool=max` |"


def test_an_unknown_lesson_lists_the_valid_ones(run_cli, tmp_path):
    proc = run_cli("lab", "optimisers-typo", cwd=tmp_path)
    assert proc.returncode == 2
    assert "error: no lesson 'optimisers-typo'; choose one of: activations," in proc.stderr
    assert "optimizers" in proc.stderr and "Traceback" not in proc.stderr


def test_overrides_compose_with_a_lesson_and_a_typo_is_refused(tmp_path):
    main(["losses", "--quick", "--out", str(tmp_path), "trainer.max_epochs=2", "optimizer.lr=0.02"])
    import yaml

    saved = yaml.safe_load((tmp_path / "losses-quick" / "runs" / "mse" / "seed0" / "config_resolved.yaml").read_text())
    assert saved["trainer"]["max_epochs"] == 2 and saved["optimizer"]["lr"] == 0.02  # the user's come last
    assert saved["trainer"]["loss"] == "mse"                                       # the arm's still apply
    page = (tmp_path / "losses-quick" / "losses.md").read_text()
    every_run = next(line for line in page.splitlines() if line.startswith("Every run"))
    assert "trainer.max_epochs=2" in every_run and "optimizer.lr=0.02" in every_run  # what ran, not the lesson's
    assert "trainer.max_epochs=1 " not in every_run and "optimizer.lr=0.05" not in every_run
    with pytest.raises(SystemExit, match="^2$") as stop:
        main(["losses", "--quick", "--out", str(tmp_path / "typo"), "trainer.max_epoch=2"])
    assert stop.value.code == 2
    assert not (tmp_path / "typo").exists()  # refused before anything ran


def test_a_bad_lesson_file_is_named(tmp_path, monkeypatch):
    from cnnlab.lab import lessons

    (tmp_path / "broken.yaml").write_text("title: x\nquestion: q\nexpectation: e\narms: {a: [x=1]}\ncolumns: [nope]\n")
    monkeypatch.setattr(lessons, "lab_dir", lambda: tmp_path)
    with pytest.raises(ConfigError, match=r"broken.yaml: columns.0"):
        lessons.load_lesson("broken")


def test_the_index_gives_each_recorded_lessons_minutes(tmp_path):
    """The minutes a page's "Measured by that command" line states are read back for the index, for the recorded
    pages in docs/lab and for a line as a run writes it; a quick run's page gives none."""
    import shutil
    from types import SimpleNamespace

    from cnnlab.lab.index import write_index
    from cnnlab.lab.page import _measured_line, measured_minutes

    machine = "2 CPU cores (x86_64), torch 2.14.1, 2 torch threads, load average 2.0 at the end"
    result = SimpleNamespace(arms=[SimpleNamespace(runs=[0, 1, 2])] * 2, seconds=612.0, quick=False,
                             measured={"date": "2026-12-02", "machine": machine, "commit": "abc1234"})
    page = tmp_path / "one.md"
    page.write_text(f"# One\n\n{_measured_line(result)}\n")
    assert measured_minutes(page) == "10.2 (load 2.0)"
    page.write_text(f"# One\n\n{_measured_line(SimpleNamespace(**{**vars(result), 'quick': True}))}\n")
    assert measured_minutes(page) is None

    docs = Path(__file__).resolve().parents[1] / "docs" / "lab"
    recorded = [name for name in LESSONS if (docs / f"{name}.md").is_file()]
    assert len(recorded) >= 15
    pages = tmp_path / "pages"
    shutil.copytree(docs, pages)
    index = write_index(pages).read_text()
    for name in recorded:
        minutes = measured_minutes(docs / f"{name}.md")
        assert minutes, f"docs/lab/{name}.md states no minutes"
        row = next(line for line in index.splitlines() if f"`cnnlab-lab {name} --page" in line)
        assert f"| {minutes} | [{name}.md]({name}.md) |" in row
