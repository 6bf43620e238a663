"""cnnlab-summary on data whose classes only the files know: an image folder's class folders and a shard set's
manifest give the head's size, as a training run would, without loading an image."""

from __future__ import annotations

import json

import disk_formats as disk


def head_outputs(done) -> int:
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return json.loads(done.stdout)["output_shape"][0]


def test_summary_of_an_image_folder_sizes_the_head_from_its_class_folders(tmp_path, run_cli):
    disk.write_image_folder(tmp_path / "imgs", classes=("a", "b", "c", "d", "e"), per_class=2)
    done = run_cli("summary", "data=imagefolder", f"data.root={tmp_path / 'imgs'}", "data.input_size=[16,16]",
                   "model=lenet5", "--json", cwd=tmp_path)
    assert head_outputs(done) == 5


def test_summary_of_a_shard_set_sizes_the_head_from_its_manifest(tmp_path, run_cli):
    disk.write_image_folder(tmp_path / "imgs", classes=("a", "b", "c"), per_class=4)
    wrote = run_cli("shards", "imgs", "--out", "out", "--val-fraction", "0.25", "--test-fraction", "0.25", cwd=tmp_path)
    assert wrote.returncode == 0, wrote.stderr
    done = run_cli("summary", "data=webdataset", f'data.train_shards="{tmp_path}/out/train-000000.tar"',
                   "data.input_size=[16,16]", "model=lenet5", "--json", cwd=tmp_path)
    assert head_outputs(done) == 3


def test_a_missing_image_folder_is_one_error_line(tmp_path, run_cli):
    done = run_cli("summary", "data=imagefolder", f"data.root={tmp_path / 'nowhere'}", "model=lenet5", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.strip().startswith("error: data.root=")
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
