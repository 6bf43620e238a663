"""cnnlab-doctor flags each classic broken setup with the right check, status and next step, and passes a good one.

In-process on the bundled digits, each test running only the checks it is about with small budgets; one CLI run.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from cnnlab.diagnose.checklist import Workspace, run_checklist
from cnnlab.diagnose.subject import Subject
from cnnlab.cli.doctor import doctor
from cnnlab.errors import ConfigError
from cnnlab.run.lifecycle import prepare

QUICK = ["data=digits", "logger=none", "trainer.summary=none", "trainer.progress=none", "doctor.overfit.steps=120",
         "doctor.gradients.steps=5", "doctor.lr_range.steps=60", "doctor.data.grid_images=8"]


@pytest.fixture
def examine(make_cfg, tmp_path):
    """examine(*overrides, only=(check names), tamper=fn(subject)) -> {check name: Check}."""

    def run(*overrides: str, only=None, tamper=None):
        cfg = make_cfg(*QUICK, *overrides, config_name="doctor")
        subject = Subject.from_run(prepare(cfg, overrides=[], kind="doctor"))
        if tamper is not None:
            tamper(subject)
        checks = run_checklist(subject, Workspace(tmp_path / "plots"), only=only)
        return {c.name: c for c in checks}

    return run


def test_a_sound_setup_passes_every_check(examine):
    checks = examine()
    assert {name: c.status for name, c in checks.items() if c.status != "PASS"} == {}
    assert {"class balance", "input statistics", "duplicates across splits", "sample grid", "output layer",
            "initial loss", "overfit one batch", "labels carry signal", "learning-rate range", "gradient flow",
            "update/weight ratio", "activations"} == set(checks)
    assert checks["overfit one batch"].values["accuracy"] >= 0.99
    assert "optimizer.lr=" in checks["learning-rate range"].measured  # the suggested override, printed


def test_an_output_layer_of_the_wrong_width_fails_and_later_checks_report_the_error(examine):
    def five_outputs(subject):
        subject.model.classifier[-1] = nn.Linear(84, 5)

    checks = examine(only=("output layer", "initial loss", "overfit one batch"), tamper=five_outputs)
    assert checks["output layer"].status == "FAIL"
    assert "(8, 10)" in checks["output layer"].measured and "10 wide" in checks["output layer"].advice
    assert checks["initial loss"].status == "FAIL"
    # cross-entropy raises on a label >= 5: the check's error becomes a FAIL, the report goes on
    assert checks["overfit one batch"].status == "FAIL"
    assert "could not run" in checks["overfit one batch"].measured


@pytest.mark.parametrize("lr, cause", [("10", "too high"), ("1e-7", "too low")])
def test_a_learning_rate_far_too_high_or_low_is_named(examine, lr, cause):
    checks = examine(f"optimizer.lr={lr}", "doctor.overfit.steps=40",
                     only=("overfit one batch", "learning-rate range", "gradient flow"))
    overfit = checks["overfit one batch"]
    assert overfit.status == "FAIL" and overfit.values["accuracy"] < 0.5
    assert f"optimizer.lr={float(lr):g} is too high" in overfit.advice if cause == "too high" else \
        f"optimizer.lr={float(lr):g} may be far too low" in overfit.advice
    assert checks["update/weight ratio"].status == "WARN" and cause in checks["update/weight ratio"].advice
    lr_check = checks["learning-rate range"]
    assert lr_check.status == "WARN"
    suggested = lr_check.values["suggestion"]
    assert f"optimizer.lr={float(lr):g} is" in lr_check.advice and f"{suggested:.2g}" in lr_check.advice


# The default cnnlab-doctor run: mnist_sample and the range test's 100 steps (QUICK has smaller ones).
DEFAULT_RANGE = ["data=mnist_sample", "doctor.lr_range.steps=100"]


def test_the_healthy_default_setup_gets_no_learning_rate_warning(examine):
    # LeNet-5 with adamw lr 0.003 trains to 98%: the rate lies in the range test's band of good rates
    check = examine(*DEFAULT_RANGE, only=("learning-rate range",))["learning-rate range"]
    assert check.status == "PASS", (check.measured, check.advice)
    low, high = check.values["band"]
    assert low <= 0.003 <= high and f"good rates {low:.2g}..{high:.2g}" in check.measured


def test_a_healthy_sgd_setup_gets_a_suggestion_or_an_honest_inconclusive_never_check_the_data(examine):
    check = examine(*DEFAULT_RANGE, "optimizer=sgd", only=("learning-rate range",))["learning-rate range"]
    said = f"{check.measured} {check.advice}"
    assert "check the data" not in said and "never decreased" not in said
    assert check.status == "PASS" or "inconclusive" in check.measured, said


# The learning-rate lesson's setup: SGD with momentum at constant rates; 0.01 trains to 97%, 0.3 stays at chance.
CONSTANT_SGD = [*DEFAULT_RANGE, "augment=none", "scheduler=none", "optimizer=sgd", "optimizer.momentum=0.9",
                "optimizer.weight_decay=0.0"]


@pytest.mark.parametrize("lr, status", [("0.01", "PASS"), ("0.3", "WARN")])
def test_a_constant_rate_run_is_judged_by_the_band_for_runs_without_warm_up(examine, lr, status):
    check = examine(*CONSTANT_SGD, f"optimizer.lr={lr}", only=("learning-rate range",))["learning-rate range"]
    assert check.status == status, (check.measured, check.advice)
    assert check.values["rule"].startswith("a tenth of the minimum")
    assert check.values["band"][1] <= check.values["min_loss_lr"]


def test_overfit_advice_for_a_rate_that_blows_up_names_rates_to_try_not_a_suggestion(examine):
    overfit = examine("optimizer.lr=5", "doctor.overfit.steps=20", only=("overfit one batch",))["overfit one batch"]
    assert overfit.status == "FAIL" and "blew up" in overfit.advice
    assert "optimizer.lr=0.5" in overfit.advice and "optimizer.lr=0.05" in overfit.advice
    assert "suggest" not in overfit.advice


def test_shuffled_labels_are_memorised_but_carry_no_signal(examine):
    def shuffle_training_labels(subject):
        labels = subject.plain.labels  # shared with the augmented training loader
        labels.copy_(labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))])

    checks = examine(only=("overfit one batch",), tamper=shuffle_training_labels)
    assert checks["overfit one batch"].status == "PASS"
    signal = checks["labels carry signal"]
    assert signal.status == "FAIL" and "no signal" in signal.advice
    assert signal.values["val_accuracy"] <= signal.values["threshold"]


def test_unnormalised_inputs_fail_the_input_statistics_with_the_values_to_set(examine):
    # x / 255 is undone: the model sees raw 0..255 pixels
    checks = examine("data.mean=[0]", "data.std=[0.00392156862745098]", only=("input statistics", "initial loss"))
    stats = checks["input statistics"]
    assert stats.status == "FAIL" and stats.values["mean"][0] > 10
    assert "not normalised" in stats.advice and "data.mean=null data.std=null" in stats.advice
    assert checks["initial loss"].status == "FAIL"  # huge inputs make confident, wrong first predictions


def test_a_deep_sigmoid_mlp_has_vanishing_gradients_named_by_layer(examine):
    checks = examine("model=mlp", "model.hidden=[64,64,64,64,64,64]", "model.activation=sigmoid",
                     only=("gradient flow",))
    flow = checks["gradient flow"]
    assert flow.status == "FAIL" and "vanishing" in flow.measured
    assert "net.1, net.3" in flow.advice and "net.13" not in flow.advice  # the first layers, not the output
    assert "model.activation=relu" in flow.advice


def test_the_doctors_own_keys_are_checked_before_anything_is_built(make_cfg, tmp_path):
    with pytest.raises(ConfigError, match=r"doctor.data.std_range=\[2.0, 1.0\]"):
        doctor(make_cfg("data=digits", "doctor.data.std_range=[2.0,1.0]", config_name="doctor"), overrides=[])
    with pytest.raises(ConfigError, match="doctor.overfit.steps=0"):
        doctor(make_cfg("data=digits", "doctor.overfit.steps=0", config_name="doctor"), overrides=[])
    assert not (tmp_path / "run").exists()


def test_cli_prints_the_report_writes_doctor_json_and_plots_and_exits_1_on_a_failure(run_cli, tmp_path):
    out = tmp_path / "out"
    done = run_cli("doctor", "data=digits", f"paths.output_root={out}", "data.mean=[0]",
                   "data.std=[0.00392156862745098]", "doctor.lr_range.enabled=false", "doctor.gradients.steps=3",
                   "doctor.overfit.steps=30", "doctor.data.grid_images=8", cwd=tmp_path)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "FAIL  input statistics" in done.stdout and "-> the inputs are not normalised" in done.stdout
    run_dir = next((out / "doctor").glob("*/*"))
    report = json.loads((run_dir / "doctor.json").read_text())
    assert report["status"] == "FAIL" and report["data"] == "digits"
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    assert statuses["input statistics"] == "FAIL" and "learning-rate range" not in statuses
    for png in ("samples.png", "overfit.png", "gradients.png", "activations.png"):
        assert (run_dir / png).stat().st_size > 5000, png
    assert list(run_dir.glob("events.out.tfevents.*"))  # the same plots as TensorBoard images


def test_the_checks_run_at_the_runs_precision(examine, monkeypatch):
    """A bf16 run is examined in bf16: every forward pass of the checks and the range test's steps autocast."""
    import cnnlab.diagnose.checks_training as checks_training

    seen = {}
    real = checks_training.lr_range_test

    def spy(*args, autocast, scaler, **kwargs):
        with autocast():
            seen["dtype"] = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
        seen["scaler"] = scaler
        return real(*args, autocast=autocast, scaler=scaler, **kwargs)

    monkeypatch.setattr(checks_training, "lr_range_test", spy)

    def logits_dtype(subject):
        x, _ = subject.batches(1)[0]
        seen["logits"] = subject.logits(subject.model, x).dtype

    checks = examine("trainer.precision=bf16", only=("overfit one batch", "learning-rate range"), tamper=logits_dtype)
    assert seen == {"dtype": torch.bfloat16, "scaler": None, "logits": torch.bfloat16}
    assert checks["overfit one batch"].status == "PASS"  # memorises its batches in bf16 too
