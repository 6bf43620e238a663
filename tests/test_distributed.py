"""Data-parallel training under real `torchrun` processes (gloo on CPU, 2 processes, a tiny MLP on the bundled
digits): a 2-process run equals a 1-process run of the same global batch, validation and test count every sample
once, checkpoints resume across world sizes, SIGTERM to one rank stops all after the same step with one
checkpoint, and only rank 0 writes files. Plus the sharding itself and the bad-input errors."""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import cli_env
from procs import torchrun_worker_pids
from runs import fit

from cnnlab.data.loaders import EpochSampler, TensorLoader, shard, shard_size
from cnnlab.engine.batchnorm import recompute_batchnorm
from cnnlab.engine.distributed import SINGLE, convert_sync_batchnorm, resolve_backend
from cnnlab.errors import ConfigError

# 8x8 digits (1,439 train / 179 val / 179 test: the val and test sets split unevenly over 2 processes), an MLP
# without batch norm, no augmentation; SGD with momentum at a constant rate, so that runs of different lengths
# can be compared. limit_train_batches=20 makes every epoch 20 global batches of 64, with no partial last batch.
BASE = ["data=digits", "data.input_size=[8,8]", "model=mlp", "model.dropout=0.0", "model.batch_norm=false",
        "augment=none", "optimizer=sgd", "optimizer.lr=0.05", "scheduler=none", "trainer.progress=none",
        "trainer.summary=none", "logger.histogram_every_n_epochs=0", "trainer.limit_train_batches=20"]


def _env(tmp_path: Path) -> dict:
    # one torch thread per process (two processes on two cores), and a private TMPDIR to see what is left there
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    return dict(cli_env(), OMP_NUM_THREADS="1", TMPDIR=str(tmp))


def torchrun_cmd(n: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
            "-m", "cnnlab.train", *args]


def torchrun(n: int, *args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(torchrun_cmd(n, *args), cwd=cwd, env=_env(cwd), capture_output=True, text=True,
                          timeout=timeout)


def single(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cnnlab.train", *args], cwd=cwd, env=_env(cwd),
                          capture_output=True, text=True, timeout=timeout)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def assert_same_run(a: Path, b: Path, rtol=1e-5, atol=1e-6) -> None:
    """Same final weights (float tolerance) and the same val and test metrics."""
    wa, wb = weights(a), weights(b)
    assert wa["epoch"] == wb["epoch"] and wa["global_step"] == wb["global_step"]
    for name, value in wa["model"].items():
        torch.testing.assert_close(value, wb["model"][name], rtol=rtol, atol=atol, msg=name)
    for ea, eb in zip(wa["history"], wb["history"], strict=True):
        for key in ("val/loss", "val/acc", "train/loss", "train/acc"):
            assert ea[key] == pytest.approx(eb[key], rel=rtol, abs=atol), key
    ma, mb = metrics(a), metrics(b)
    for key in ("test/loss", "test/acc", "test/acc_top5"):
        assert ma[key] == pytest.approx(mb[key], rel=rtol, abs=atol), key


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One process, batch 64, 2 and 3 epochs (the runs the distributed ones must reproduce)."""
    root = tmp_path_factory.mktemp("single")
    for epochs in (2, 3):
        ok(single(*BASE, "data.batch_size=64", f"trainer.max_epochs={epochs}", f"hydra.run.dir=e{epochs}", cwd=root))
    return root


# ---- sharding ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n, world", [(179, 2), (179, 3), (10, 4), (3, 4)])
def test_evaluation_shards_hold_every_sample_exactly_once(n, world):
    parts = [shard(list(range(n)), r, world, pad=False) for r in range(world)]
    assert sorted(i for p in parts for i in p) == list(range(n))
    assert [len(p) for p in parts] == [shard_size(n, r, world, pad=False) for r in range(world)]
    loaders = [TensorLoader(torch.zeros(n, 1, 2, 2, dtype=torch.uint8), torch.arange(n), 7, mean=[0.0], std=[1.0],
                            rank=r, world=world) for r in range(world)]
    seen = torch.cat([y for loader in loaders for _, y in loader])
    assert sorted(seen.tolist()) == list(range(n))


@pytest.mark.parametrize("n, world", [(1439, 2), (10, 3), (7, 4)])
def test_training_shards_are_equal_strided_slices_of_one_permutation(n, world):
    """Every process runs the same number of batches (padding repeats the order's first samples, as torch's
    DistributedSampler does), and the i-th batches of all processes together are the i-th global batch."""
    b = 4
    tensor = [TensorLoader(torch.zeros(n, 1, 1, 1, dtype=torch.uint8), torch.arange(n), b, mean=[0.0], std=[1.0],
                           shuffle=True, seed=3, rank=r, world=world) for r in range(world)]
    samplers = [EpochSampler(n, True, 3, r, world) for r in range(world)]
    whole = TensorLoader(torch.zeros(n, 1, 1, 1, dtype=torch.uint8), torch.arange(n), b * world, mean=[0.0],
                         std=[1.0], shuffle=True, seed=3)
    for loader in tensor:
        loader.set_epoch(2)
    for sampler in samplers:
        sampler.set_epoch(2)
    whole.set_epoch(2)
    assert len({len(loader) for loader in tensor}) == 1 and len({len(s) for s in samplers}) == 1
    per_rank = [[y.tolist() for _, y in loader] for loader in tensor]
    sampled = [[i for i, _ in sampler] for sampler in samplers]
    assert [[y for batch in rank for y in batch] for rank in per_rank] == sampled  # both paths split alike
    covered = {y for rank in sampled for y in rank}
    assert covered == set(range(n)) and sum(map(len, sampled)) == -(-n // world) * world
    if n % (b * world) == 0 or n == 1439:
        for i, global_batch in enumerate(whole):
            if len(global_batch[1]) < b * world:
                break  # the last, padded, global batch
            together = sorted(y for rank in per_rank for y in rank[i])
            assert together == sorted(global_batch[1].tolist())


def test_backend_follows_the_device_and_nccl_needs_cuda():
    assert resolve_backend("auto", torch.device("cpu")) == "gloo"
    assert resolve_backend("auto", torch.device("cuda")) == "nccl"
    with pytest.raises(ConfigError, match="trainer.dist_backend=nccl needs CUDA"):
        resolve_backend("nccl", torch.device("cpu"))


def test_sync_batchnorm_warns_without_batch_norm_and_needs_cuda(caplog):
    plain = torch.nn.Sequential(torch.nn.Linear(2, 2))
    with caplog.at_level("WARNING", logger="cnnlab"):
        assert convert_sync_batchnorm(plain, torch.device("cpu")) is plain
    assert "has no BatchNorm layer" in caplog.text
    with pytest.raises(ConfigError, match="sync_batchnorm=true needs CUDA"):
        convert_sync_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm2d(2)), torch.device("cpu"))


def test_one_process_has_no_collectives():
    t = torch.ones(3)
    assert SINGLE.all_reduce_sum_(t) is t and t.tolist() == [1, 1, 1]
    assert SINGLE.all_reduce_mean_(t) is t and t.tolist() == [1, 1, 1]
    assert SINGLE.any(True, False) == [True, False]
    assert SINGLE.gather_objects("x") == ["x"] and SINGLE.broadcast_object(5) == 5


# ---- real torchrun runs --------------------------------------------------------------------------------------
SWA_BN_WORKER = """
import json, os, sys
import torch, torch.nn as nn
from cnnlab.engine.distributed import Dist
from cnnlab.engine.averaging import SWA

torch.distributed.init_process_group("gloo")
rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
torch.manual_seed(0)  # the same model on every process, as DDP keeps it
model = nn.Sequential(nn.Conv2d(1, 3, 1), nn.BatchNorm2d(3))
swa = SWA(model, torch.optim.SGD(model.parameters(), lr=0.1), start_epoch=1, lr=None, anneal_epochs=1)
shard = [torch.full((4, 1, 2, 2), float(10 * rank + i)) + torch.arange(4.0).view(4, 1, 1, 1) for i in range(3)]
swa.after_epoch(model, 1, lambda: iter(shard), Dist(world, rank, 0, "gloo"))
norm = swa.module[1]
with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as f:
    json.dump({"mean": norm.running_mean.tolist(), "var": norm.running_var.tolist()}, f)
torch.distributed.barrier()  # gloo aborts a process that leaves while the other still talks to it
# Leave without tearing gloo down: its teardown once aborted a process under load ("terminate called without an
# active exception") after the statistics were written, and teardown is not what this test is about.
os._exit(0)
"""


@pytest.mark.slow
def test_swa_batch_norm_statistics_are_averaged_over_every_processs_shard(tmp_path):
    """SWA recomputes its batch-norm statistics on each process's own shard: the processes then hold the
    average over all the shards' batches (equal in number), the same on each, not rank 0's shard alone."""
    import torch.nn as nn
    from torch.optim.swa_utils import update_bn

    (tmp_path / "worker.py").write_text(SWA_BN_WORKER)
    ok(subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                       str(tmp_path / "worker.py"), str(tmp_path)], cwd=tmp_path, env=_env(tmp_path),
                      capture_output=True, text=True, timeout=300))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 1), nn.BatchNorm2d(3))
    every = [torch.full((4, 1, 2, 2), float(10 * r + i)) + torch.arange(4.0).view(4, 1, 1, 1)
             for r in (0, 1) for i in range(3)]
    update_bn(every, model)  # one process over both shards' batches: the statistics to reproduce
    torch.testing.assert_close(torch.tensor(ranks[0]["mean"]), model[1].running_mean)
    torch.testing.assert_close(torch.tensor(ranks[0]["var"]), model[1].running_var)
    update_bn(every[:3], model)
    assert not torch.allclose(torch.tensor(ranks[0]["mean"]), model[1].running_mean)  # rank 0's shard alone differs


@pytest.mark.slow  # real torchrun jobs of two processes, each a whole training run
def test_bn_recalibrate_averages_every_processs_shard_and_leaves_training_alone(tmp_path, make_cfg):
    """trainer.bn_recalibrate under DDP: each process recomputes the statistics over the first N batches of its
    own shard and the processes average them, so the checkpoint holds the statistics of all 2 x N batches; the
    training itself is the run's without the key."""
    args = [*BASE, "model.batch_norm=true", "optimizer.lr=0.3", "data.batch_size=32", "trainer.max_epochs=2"]
    on = ok(torchrun(2, *args, "trainer.bn_recalibrate=3", "hydra.run.dir=on", cwd=tmp_path))
    ok(torchrun(2, *args, "hydra.run.dir=off", cwd=tmp_path))
    assert "recomputed over 3 training batches (96 images per process, averaged over 2 processes)" in on.stdout
    a, b = weights(tmp_path / "on"), weights(tmp_path / "off")
    assert [(h["train/loss"], h["train/acc"]) for h in a["history"]] == \
        [(h["train/loss"], h["train/acc"]) for h in b["history"]]
    assert [h["val/loss"] for h in a["history"]] != [h["val/loss"] for h in b["history"]]

    # the statistics of the saved weights over both shards' first 3 batches of epoch 2, in one process
    run, _ = fit(make_cfg(*args, "trainer.max_epochs=1", "trainer.limit_train_batches=1", run="local"))
    run.model.load_state_dict(a["model"])
    inputs = []
    for rank in (0, 1):
        shard_loader = copy.copy(run.data.train)
        shard_loader.rank, shard_loader.world = rank, 2
        shard_loader.set_epoch(2)
        inputs += [x for (x, _), _ in zip(shard_loader, range(3))]
    run.model.train()
    recompute_batchnorm(run.model, inputs)
    for name, value in run.model.state_dict().items():
        if name.endswith(("running_mean", "running_var")):
            torch.testing.assert_close(value, a["model"][name], msg=name)


# Real torchrun jobs of two processes, each a whole training run: -m slow (and CI) runs every variant.
@pytest.mark.slow
@pytest.mark.parametrize("variant", [
    ["data.batch_size=32"],                                              # fast path, 2 x 32
    pytest.param(["data.batch_size=32", "data.loader=dataloader", "data.num_workers=0"],  # DataLoader path, 2 x 32
                 marks=pytest.mark.slow),
    pytest.param(["data.batch_size=16", "trainer.accumulate_grad_batches=2", "trainer.limit_train_batches=40"],
                 marks=pytest.mark.slow),                                # 2 x 16 x 2
], ids=["tensor", "dataloader", "accumulate"])
def test_two_processes_train_like_one_with_the_same_global_batch(tmp_path, reference, variant):
    ok(torchrun(2, *BASE, *variant, "trainer.max_epochs=2", "hydra.run.dir=ddp", cwd=tmp_path))
    assert_same_run(tmp_path / "ddp", reference / "e2")
    # 179 validation and test images over 2 processes: each counted once (a dropped or doubled image shows)
    m = metrics(tmp_path / "ddp")
    assert m["world_size"] == 2
    assert round(m["test/acc"] * 179, 6) == int(round(m["test/acc"] * 179))
    assert sum(m["test/confusion_matrix"], []).count(0) < 100 and sum(map(sum, m["test/confusion_matrix"])) == 179


@pytest.mark.slow  # real torchrun jobs of two processes, each a whole training run
def test_only_rank_zero_writes_files(tmp_path, reference):
    """Run dirs are named by time and process id, so without care each rank would make its own: there must be
    one, holding the same files as a single-process run's, with the world size recorded."""
    proc = ok(torchrun(2, *BASE, "data.batch_size=32", "trainer.max_epochs=2", "trainer.summary=full",
                       cwd=tmp_path))
    runs = [p for p in (tmp_path / "outputs").glob("*/*") if p.is_dir()]
    assert len(runs) == 1, runs
    run = runs[0]
    one = tmp_path / "one"
    ok(single(*BASE, "data.batch_size=64", "trainer.max_epochs=2", "trainer.summary=full", f"hydra.run.dir={one}",
              cwd=tmp_path))
    files = lambda d: sorted(str(p.relative_to(d)).split(".tfevents")[0] for p in d.rglob("*") if p.is_file())  # noqa: E731
    assert files(run) == files(one)
    assert not list((tmp_path / "tmp").glob("cnnlab-rank*"))  # the other rank's scratch dir for Hydra is gone
    assert json.loads((run / "environment.json").read_text())["world_size"] == 2
    assert json.loads((run / "model_summary.json").read_text())["world_size"] == 2
    assert "2 processes (gloo)" in (run / "model_summary.txt").read_text()
    log = (run / "train.log").read_text()
    assert log.count("test/loss") == 1 and "[rank 1]" not in log
    assert proc.stdout.count("test/loss") == 1  # rank 1 prints warnings only


@pytest.mark.slow  # real torchrun jobs of two processes, each a whole training run
def test_a_ddp_checkpoint_resumes_in_one_process_and_back(tmp_path, reference):
    # 2 processes for 2 epochs, then 1 process to epoch 3: the uninterrupted 1-process 3-epoch run
    ok(torchrun(2, *BASE, "data.batch_size=32", "trainer.max_epochs=2", "hydra.run.dir=ddp", cwd=tmp_path))
    ok(single("trainer.resume=ddp", "data.batch_size=64", "trainer.max_epochs=3", "hydra.run.dir=ddp_then_one",
              cwd=tmp_path))
    assert_same_run(tmp_path / "ddp_then_one", reference / "e3")
    # and a 1-process checkpoint continued by 2 processes
    ok(torchrun(2, "trainer.resume=" + str(reference / "e2"), "data.batch_size=32", "trainer.max_epochs=3",
                "hydra.run.dir=one_then_ddp", cwd=tmp_path))
    assert_same_run(tmp_path / "one_then_ddp", reference / "e3")


@pytest.mark.slow  # SIGTERM to one torchrun rank mid-training: when it lands depends on timing
def test_sigterm_to_one_rank_stops_all_with_one_checkpoint_and_the_resumed_run_matches(tmp_path):
    # dropout on, so that resuming must restore every rank's random state to match; 90 steps per epoch
    args = [*BASE[:3], "model.dropout=0.2", *BASE[4:-1], "data.batch_size=8", "trainer.max_epochs=4",
            "trainer.progress=plain", "trainer.log_every_n_steps=5"]
    ok(torchrun(2, *args, "hydra.run.dir=whole", cwd=tmp_path))
    proc = subprocess.Popen(torchrun_cmd(2, *args, "hydra.run.dir=stopped"), cwd=tmp_path, env=_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = []
    for line in proc.stdout:  # wait until epoch 1 is over, then stop rank 1 during epoch 2
        out.append(line)
        if line.startswith("epoch 1/4"):
            break
    time.sleep(0.1)
    workers = torchrun_worker_pids(proc.pid)
    assert set(workers) == {0, 1}, "".join(out)
    os.kill(workers[1], signal.SIGTERM)
    out += proc.stdout.readlines()
    proc.wait(timeout=120)
    text = "".join(out)
    assert proc.returncode != 0  # torchrun reports the stopped workers' status (128 + 15) as a failure
    assert text.count("stopped by SIGTERM") == 1, text  # said once, by rank 0
    assert not re.search(r'File ".*cnnlab', text), text  # no traceback through cnnlab (torchrun prints its own)
    ckpt = torch.load(tmp_path / "stopped" / "checkpoints" / "last.ckpt", weights_only=True)
    assert sorted(p.name for p in (tmp_path / "stopped" / "checkpoints").iterdir()) in (
        ["best.ckpt", "last.ckpt"], ["last.ckpt"])
    assert not (tmp_path / "stopped" / "metrics.json").exists()
    if "partial" in ckpt:  # stopped mid-epoch (else during validation, at the epoch's end)
        assert ckpt["partial"]["world_size"] == 2 and len(ckpt["partial"]["ranks"]) == 2
        steps = ckpt["partial"]["loader"]["batches"]
        assert [r["loader"]["batches"] for r in ckpt["partial"]["ranks"]] == [steps, steps]  # the same step
    ok(torchrun(2, "trainer.resume=stopped", "hydra.run.dir=stopped", cwd=tmp_path))
    assert_same_run(tmp_path / "stopped", tmp_path / "whole")


@pytest.mark.slow
def test_a_mid_epoch_checkpoint_resumes_only_with_its_number_of_processes(tmp_path):
    """Each process's share of an epoch depends on their number: refused before training, saying how many."""
    args = [*BASE, "data.batch_size=32", "trainer.max_epochs=2", "trainer.limit_train_batches=null"]
    ok(torchrun(2, *args, "hydra.run.dir=ddp", cwd=tmp_path))
    # make its last.ckpt a mid-epoch one, as a stop signal would have written it (positions of both ranks)
    path = tmp_path / "ddp" / "checkpoints" / "last.ckpt"
    state = torch.load(path, weights_only=True)
    position = {"loader": {"epoch": 2, "batches": 3, "generator": None, "mix": None}, "rng": state["rng"]}
    state["partial"] = {"epoch": 2, **position, "seconds": 0.1, "tracker": {"loss_sum": 0.0,
                        "correct": torch.zeros(1, dtype=torch.long), "count": 0},
                        "ranks": [position, position], "world_size": 2}
    state["epoch"] = 1
    torch.save(state, path)
    proc = single("trainer.resume=ddp", "hydra.run.dir=one", cwd=tmp_path)
    assert proc.returncode == 2
    assert "written mid-epoch 2 by 2 process(es)" in proc.stdout + proc.stderr
    assert "torchrun --nproc_per_node=2" in proc.stdout + proc.stderr


@pytest.mark.parametrize("n, args, message", [
    (2, ["trainer.device=cpu", "trainer.dist_backend=nccl"], "trainer.dist_backend=nccl needs CUDA"),
    pytest.param(3, ["data.batch_size=1000"], "3 processes but the 1439 training images make only 2 batch(es)",
                 marks=pytest.mark.slow),
    # torchrun and its two processes for each case: the default run keeps nccl-on-cpu, the slow tests the others
    pytest.param(2, ["-m", "optimizer.lr=0.1,0.2"], "a sweep (-m) cannot run under torchrun", marks=pytest.mark.slow),
], ids=["nccl-on-cpu", "more-processes-than-batches", "sweep"])
def test_bad_distributed_input_is_one_error_before_training(tmp_path, n, args, message):
    proc = torchrun(n, *BASE, *args, "trainer.max_epochs=1", cwd=tmp_path)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"error: {message}" in text, text[-3000:]
    assert not re.search(r'File ".*cnnlab', text), text[-3000:]  # no traceback through cnnlab (torchrun prints its own)
    assert not list(tmp_path.glob("outputs/**/checkpoints")) and not list(tmp_path.glob("outputs/**/metrics.json"))


@pytest.mark.slow
def test_a_slurm_local_job_of_two_tasks_trains_one_run_data_parallel(tmp_path, reference):
    """The SLURM launcher's code path: submitit starts 2 tasks for the job, cnnlab turns their SLURM-style
    environment into torch.distributed's, and the two train one run (the 1-process run's twin)."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    ok(single("-m", "hydra/launcher=slurm_local", "hydra.launcher.tasks_per_node=2", *BASE, "data.batch_size=32",
              "trainer.max_epochs=2", "hydra.sweep.dir=sweep", cwd=tmp_path))
    assert metrics(tmp_path / "sweep" / "0")["world_size"] == 2
    assert_same_run(tmp_path / "sweep" / "0", reference / "e2")
    assert (tmp_path / "sweep" / "summary.md").is_file()


@pytest.mark.slow  # real torchrun jobs of two processes
def test_two_bf16_processes_train_like_one_bf16_process(tmp_path):
    """bf16 autocast under DDP on gloo: the gradients of the bf16 forward passes are all-reduced as fp32 (the
    weights' dtype) and the run matches one bf16 process with the same global batch, to bf16's rounding."""
    bf16 = [*BASE, "trainer.precision=bf16", "trainer.max_epochs=2"]
    ok(single(*bf16, "data.batch_size=64", "hydra.run.dir=one", cwd=tmp_path))
    ok(torchrun(2, *bf16, "data.batch_size=32", "hydra.run.dir=ddp", cwd=tmp_path))
    assert metrics(tmp_path / "ddp")["precision"] == metrics(tmp_path / "one")["precision"] == "bf16"
    assert all(v.dtype == torch.float32 for v in weights(tmp_path / "ddp")["model"].values() if v.is_floating_point())
    # measured: weights within 0.022 of each other (values up to 0.4), val/loss within 0.3%, equal test accuracy
    assert_same_run(tmp_path / "ddp", tmp_path / "one", rtol=1e-2, atol=5e-2)
