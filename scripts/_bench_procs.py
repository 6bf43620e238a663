"""Measuring a benchmarked command as it runs: its process tree's memory, its first step, its decode rate."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

MIB = 1024 * 1024
BATCH = 64  # the benchmark's training batch, both sides

def _children(pid: int) -> list[int]:
    kids = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids += [int(k) for k in f.read().split()]
    except OSError:
        pass
    return kids


def tree_pids(pid: int) -> list[int]:
    """pid and all its descendants, alive now."""
    seen, todo = [], [pid]
    while todo:
        p = todo.pop()
        seen.append(p)
        todo += _children(p)
    return seen


def status_kib(pid: int, keys=("VmRSS", "RssAnon", "RssFile", "RssShmem")) -> dict[str, int]:
    """The /proc/<pid>/status memory lines in KiB (empty where the process is gone)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name in keys:
                    out[name] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        return {}
    return out


def pss_kib(pid: int) -> dict[str, int]:
    """Pss, Pss_Anon and Pss_File of /proc/<pid>/smaps_rollup in KiB (empty where the process is gone). Shared
    pages are divided among the processes sharing them, so a tree's sum counts each page once. Reading it walks
    the process's page tables (~20 ms per GiB), far too slow for every sample."""
    out = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name in ("Pss", "Pss_Anon", "Pss_File"):
                    out[name] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        return {}
    return out


class TreeMemory:
    """Samples a process tree's memory in a thread, from start() until stop(): every `interval` s the
    /proc/<pid>/status of every process (cheap), for the largest sum of VmRSS, that sample's RssAnon / RssFile /
    RssShmem sums and process count, the largest RssAnon and RssFile sums on their own and the root process's
    largest VmRSS; every `pss_interval` s (0: never) the tree's PSS sum, for its largest value."""

    def __init__(self, pid: int, interval: float = 0.05, pss_interval: float = 0.0):
        self.pid, self.interval, self.pss_interval = pid, interval, pss_interval
        self.peak = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0, "RssShmem": 0, "processes": 0}
        self.peak_anon = self.peak_file = self.peak_main = self.samples = 0
        self.peak_pss = {"Pss": 0, "Pss_Anon": 0, "Pss_File": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> dict[str, int]:
        total = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0, "RssShmem": 0, "processes": 0, "main": 0}
        for p in tree_pids(self.pid):
            st = status_kib(p)
            if st:
                total["processes"] += 1
                for k, v in st.items():
                    total[k] += v
                if p == self.pid:
                    total["main"] = st.get("VmRSS", 0)
        return total

    def sample_pss(self) -> dict[str, int]:
        total = {"Pss": 0, "Pss_Anon": 0, "Pss_File": 0}
        for p in tree_pids(self.pid):
            for k, v in pss_kib(p).items():
                total[k] += v
        return total

    def _run(self) -> None:
        next_pss = time.monotonic()
        while True:
            total = self.sample()
            self.samples += 1
            if total["VmRSS"] > self.peak["VmRSS"]:
                self.peak = total
            self.peak_anon = max(self.peak_anon, total["RssAnon"])
            self.peak_file = max(self.peak_file, total["RssFile"])
            self.peak_main = max(self.peak_main, total["main"])
            if self.pss_interval and time.monotonic() >= next_pss:
                pss = self.sample_pss()
                if pss["Pss"] > self.peak_pss["Pss"]:
                    self.peak_pss = pss
                next_pss = time.monotonic() + self.pss_interval
            if self._stop.wait(self.interval):
                return

    def start(self) -> TreeMemory:
        self._thread.start()
        return self

    def stop(self) -> dict[str, float]:
        """MiB: peak (the largest sum of VmRSS), anon / file / shmem of that sample, peak_anon, peak_file, main
        (the root process's largest VmRSS), pss / pss_anon / pss_file (the largest PSS sum, None when not
        sampled); and the process count of the peak sample and the number of samples."""
        self._stop.set()
        self._thread.join()
        pss = {k: (self.peak_pss[v] / 1024 if self.pss_interval else None)
               for k, v in (("pss", "Pss"), ("pss_anon", "Pss_Anon"), ("pss_file", "Pss_File"))}
        return {"peak": self.peak["VmRSS"] / 1024, "anon": self.peak["RssAnon"] / 1024,
                "file": self.peak["RssFile"] / 1024, "shmem": self.peak["RssShmem"] / 1024,
                "peak_anon": self.peak_anon / 1024, "peak_file": self.peak_file / 1024,
                "main": self.peak_main / 1024, **pss, "processes": self.peak["processes"], "samples": self.samples}


# ---------------------------------------------------------------- one measured run

CNNLAB_STEP = re.compile(r"epoch \d+/\d+\s+step (\d+)/\d+")
# the decoded cache's log line when it builds: "decoded 2000 images into <dir> in 0.4 s (4448 img/s)"
CNNLAB_DECODED = re.compile(r"decoded (\d+) images .*? in ([\d.]+) ?s\b(?: \(([\d,.]+) img/s\))?")


def step_of(line: str) -> int | None:
    """The training step a line of either side reports as done, else None."""
    m = CNNLAB_STEP.search(line)
    if m:
        return int(m.group(1))
    if line.startswith("{") and '"event": "step"' in line:
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError):
            return None
    return None


@dataclass
class Run:
    mode: str
    wall: float
    first_step: float
    img_s: float
    memory: dict
    steps: int
    lines: list = field(repr=False, default_factory=list)

    def decode_rate(self) -> float | None:
        """Images per second of the decoding the run logged (the cache being built), None if it logged none."""
        for line in self.lines:
            m = CNNLAB_DECODED.search(line)
            if m and m.group(3):
                return float(m.group(3).replace(",", ""))
            if m and float(m.group(2)) > 0:
                return int(m.group(1)) / float(m.group(2))
        return None


def measure(cmd: list[str], mode: str, *, env: dict, train_images: int, warmup: int, interval: float,
            pss_interval: float = 0.0, batch: int = BATCH, cwd: Path | None = None) -> Run:
    """Run cmd to exit, sampling its tree's memory and stamping its step lines; exits with its output's tail if
    it fails or never reports a step."""
    stamps: list[tuple[float, int]] = []
    lines: list[str] = []
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd,
                            bufsize=1)
    memory = TreeMemory(proc.pid, interval, pss_interval).start()

    def read() -> None:
        for line in proc.stdout:
            now = time.perf_counter() - start
            lines.append(line.rstrip("\n"))
            step = step_of(line)
            if step is not None:
                stamps.append((now, step))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    proc.wait()
    wall = time.perf_counter() - start
    reader.join()
    mem = memory.stop()
    if proc.returncode != 0 or not stamps:
        sys.stdout.flush()
        why = f"exit status {proc.returncode}" if proc.returncode else "no training step reported"
        print(f"\n{mode} failed ({why}): {shlex.join(cmd)}\n--- output (last 30 lines) ---", file=sys.stderr)
        print("\n".join(lines[-30:]), file=sys.stderr)
        sys.exit(1)
    steps = stamps[-1][1]
    sizes = [min(batch, train_images - batch * (s - 1)) for s in range(1, steps + 1)]  # the last may be short
    warm = max(1, min(warmup, steps - 1))
    t = dict((s, when) for when, s in stamps)
    img_s = sum(sizes[warm:]) / (t[steps] - t[warm]) if steps > warm and warm in t else float("nan")
    return Run(mode, wall, stamps[0][0], img_s, mem, steps, lines)


# ---------------------------------------------------------------- what the installed cnnlab has

