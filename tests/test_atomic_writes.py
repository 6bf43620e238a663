import json

import pytest

from cnnlab.errors import RunError
from cnnlab.run.records import write_failure
from cnnlab.util.outpaths import write_atomic, write_bytes_atomic, write_json


def test_text_and_bytes_no_temp_left(tmp_path):
    write_bytes_atomic("é\n", tmp_path / "a.txt")
    write_bytes_atomic(b"\x00\x01", tmp_path / "b.bin")
    write_json({"x": 1}, tmp_path / "m.json")
    write_failure(tmp_path, "stopped")
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "é\n"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "m.json").read_text() == '{\n  "x": 1\n}\n'
    assert json.loads((tmp_path / "failure.json").read_text())["message"] == "stopped"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin", "failure.json", "m.json"]


def test_raw_writer_raises_oserror_write_atomic_a_run_error(tmp_path):
    (tmp_path / "file").write_text("")
    # write_json's callers (engine/safety) tell a full disk from the OSError itself
    with pytest.raises(OSError, match="File exists"):
        write_bytes_atomic("x", tmp_path / "file" / "under.json")
    with pytest.raises(RunError, match="cannot write"):
        write_atomic(tmp_path / "file" / "under.json", "x")
