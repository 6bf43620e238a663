import subprocess

from cnnlab.util import source_tree
from cnnlab.lab import page
from cnnlab.run.runinfo import git_commit


def test_full_hash_with_dirty_flag_and_short_hash_without(monkeypatch):
    calls = []

    def fake_run(args, **kwargs):
        calls.append(args)
        out = {"rev-parse": "abc1234\n" if "--short" in args else "abc1234def5678\n", "status": " M x.py\n"}
        return subprocess.CompletedProcess(args, 0, stdout=out[args[3]], stderr="")

    monkeypatch.setattr(source_tree.subprocess, "run", fake_run)
    assert git_commit() == {"commit": "abc1234def5678", "dirty": True}  # environment.json
    calls.clear()
    assert page._commit() == "abc1234"  # the lab page
    assert [c[3] for c in calls] == ["rev-parse"]  # no status call for the page


def test_no_checkout_or_no_git_is_none(monkeypatch):
    monkeypatch.setattr(source_tree.subprocess, "run",
                        lambda args, **kw: subprocess.CompletedProcess(args, 128, stdout="", stderr="fatal"))
    assert git_commit() is None and page._commit() is None

    def missing(args, **kw):
        raise FileNotFoundError("git")

    monkeypatch.setattr(source_tree.subprocess, "run", missing)
    assert git_commit() is None and page._commit() is None

    def slow(args, **kw):
        raise subprocess.TimeoutExpired(args, 5)

    monkeypatch.setattr(source_tree.subprocess, "run", slow)
    assert git_commit() is None and page._commit() is None
