"""An epoch slowed by other processes says so: the run-queue wait of the process's threads is measured per epoch
(time/cpu_wait_s), warned about once, marked on the epoch's line, totalled in metrics.json and shown beside the
wall time in sweep summaries and lab pages."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cnnlab.engine.cpu_wait import CONTENDED_SHARE, CpuWait, contended_share, run_timing, runqueue_wait_s
from cnnlab.engine.progress import Progress

linux_only = pytest.mark.skipif(not Path("/proc/self/task").is_dir() or not hasattr(os, "sched_setaffinity"),
                                reason="Linux's per-thread schedstat and CPU affinity")


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


@pytest.mark.integration
@linux_only
def test_a_process_sharing_its_cpu_with_a_busy_neighbour_measures_the_wait():
    """Pinned to one CPU beside a process that spins on it, this process is runnable but not running about half
    the time: the measure sees it."""
    cpu = min(os.sched_getaffinity(0))
    before = os.sched_getaffinity(0)
    hog = subprocess.Popen([sys.executable, "-c", f"import os, time; os.sched_setaffinity(0, {{{cpu}}}); t = "
                            "time.time()\nwhile time.time() - t < 20: pass"])
    try:
        os.sched_setaffinity(0, {cpu})
        time.sleep(0.3)  # the neighbour is up and spinning
        wait = CpuWait()
        wait.start()
        started = time.perf_counter()
        _spin(1.0)
        waited, seconds = wait.stop(), time.perf_counter() - started
    finally:
        os.sched_setaffinity(0, before)
        hog.kill()
        hog.wait()
    assert waited is not None and waited > 0.25 * seconds, (waited, seconds)


@linux_only
def test_the_wait_is_a_non_decreasing_sum_over_the_threads():
    first = runqueue_wait_s()
    _spin(0.05)
    assert first is not None and first >= 0.0 and runqueue_wait_s() >= first


def test_one_warning_per_run_naming_the_cause_and_the_remedy(caplog):
    caplog.set_level(logging.WARNING, logger="cnnlab")
    wait = CpuWait()
    wait.check(1, seconds=10.0, wait_s=0.0)  # an idle machine: nothing said
    wait.check(1, seconds=0.5, wait_s=0.2 * torch.get_num_threads())  # 40%, but a fifth of a second: nothing
    assert not caplog.records
    busy = 10.0 * torch.get_num_threads() * (CONTENDED_SHARE + 0.3)
    wait.check(1, seconds=10.0, wait_s=busy)
    wait.check(2, seconds=10.0, wait_s=busy)
    assert len(caplog.records) == 1
    text = caplog.records[0].getMessage()
    assert text.startswith("epoch 1 took 10.0 s") and "other processes held" in text
    assert "OMP_NUM_THREADS=1" in text and "time/cpu_wait_s" in text


def test_the_epoch_line_marks_a_busy_epoch_and_only_that(caplog):
    caplog.set_level(logging.INFO, logger="cnnlab")
    progress = Progress("log", max_epochs=2)
    threads = torch.get_num_threads()
    progress.end_epoch(1, {"lr": 0.1, "throughput/img_s": 10.0, "time/cpu_wait_s": 0.75 * 4.0 * threads}, 4.0, False)
    progress.end_epoch(2, {"lr": 0.1, "throughput/img_s": 10.0, "time/cpu_wait_s": 0.0}, 4.0, False)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert "[CPU busy: threads waited 75% of the time]" in lines[0]
    assert "CPU busy" not in lines[1]


def test_run_timing_totals_the_epochs_and_leaves_out_an_unmeasured_wait():
    threads = torch.get_num_threads()
    history = [{"time/epoch_s": 3.0, "time/cpu_wait_s": 1.5 * threads}, {"time/epoch_s": 1.0, "time/cpu_wait_s": 0.0}]
    timing = run_timing(history)
    assert timing == {"time/train_s": 4.0, "time/cpu_wait_s": 1.5 * threads,
                      "time/cpu_wait_share": pytest.approx(1.5 / 4.0)}
    assert run_timing([{"time/epoch_s": 2.0}]) == {"time/train_s": 2.0}  # not Linux, or a checkpoint from before
    assert contended_share(0.0, 1.0) is None and contended_share(1.0, None) is None


def test_a_real_run_records_its_wait_per_epoch_and_in_total(trained_run):
    run_dir, metrics = trained_run
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    epochs = ckpt["history"]
    assert all(e["time/cpu_wait_s"] >= 0.0 for e in epochs)
    assert metrics["time/train_s"] == pytest.approx(sum(e["time/epoch_s"] for e in epochs))
    assert metrics["time/cpu_wait_s"] == pytest.approx(sum(e["time/cpu_wait_s"] for e in epochs))
    assert 0.0 <= metrics["time/cpu_wait_share"] == pytest.approx(
        contended_share(metrics["time/train_s"], metrics["time/cpu_wait_s"]))
    assert metrics["wall_time_s"] > metrics["time/train_s"]


def test_summaries_show_the_wait_beside_the_wall_time_and_say_what_both_measure(tmp_path):
    from cnnlab.experiments.tables import TIME_NOTE, summary_markdown
    from cnnlab.run.records import RunRecord

    records = [RunRecord(run_dir=tmp_path / str(i), overrides={"optimizer": name}, status="completed",
                         metrics={"test/acc": 0.9, "wall_time_s": wall, "time/cpu_wait_share": share},
                         wall_time_s=wall) for i, (name, wall, share) in enumerate([("sgd", 14.2, 0.74),
                                                                                   ("adamw", 3.1, 0.01)])]
    text = summary_markdown(records, "sweep")
    header = next(line for line in text.splitlines() if line.startswith("| run"))
    assert "wall s" in header and "cpu wait" in header
    assert "0.74" in text and "0.01" in text and TIME_NOTE in text
