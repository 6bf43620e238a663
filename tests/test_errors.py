"""Bad input gets one clear error naming the key and what is accepted, before any training starts."""

from __future__ import annotations

import pytest
import torch

from cnnlab.config.compose import config_dir
from cnnlab.errors import ConfigError, first_line
from cnnlab.config.overrides import check_override_keys
from cnnlab.run.lifecycle import train

BAD = [
    (["optimizer.lr=-0.1"], r"optimizer.lr=-0.1 must be > 0"),
    (["optimizer.lr=0"], r"optimizer.lr=0 must be > 0"),
    (["data.batch_size=0"], r"data.batch_size=0 must be a positive integer"),
    (["trainer.max_epochs=0"], r"trainer.max_epochs=0 must be a positive integer"),
    (["trainer.precision=fp8"], r"trainer.precision='fp8' is not accepted; choose one of auto, 32, bf16, fp16"),
    (["trainer.loss=hinge"], r"trainer.loss='hinge' is not accepted; choose one of cross_entropy, bce, mse"),
    (["trainer.label_smoothing=1.5"], r"trainer.label_smoothing=1.5 must be in \[0, 1\)"),
    (["trainer.monitor=train/loss"], r"trainer.monitor='train/loss' must be a validation metric"),
    (["trainer.early_stopping.patience=0"], r"trainer.early_stopping.patience=0 must be a positive integer"),
    (["data.split.val=0.6", "data.split.test=0.5"], r"data.split.val \+ data.split.test = 1.1 leaves nothing to train on"),
    (["data.loader=gpu"], r"data.loader='gpu' is not accepted; choose one of auto, tensor, dataloader"),
    (["model.activation=relu6"], r"model.activation='relu6' is not accepted; choose one of relu, leaky_relu"),
    (["model.pool=l3"], r"model.pool='l3' is not accepted; choose one of max, avg"),
    (["+model.depth=3"], r"model 'lenet5' has no key\(s\) model.depth"),
    (["trainer.device=tpu"], r"trainer.device='tpu' is not"),
    (["trainer.precision=fp16", "trainer.device=cpu"], r"trainer.precision=fp16 runs on CUDA only"),
    (["optimizer.nesterov=true", "optimizer=sgd", "optimizer.momentum=0"], r"nesterov=true needs optimizer.momentum > 0"),
    (["scheduler.warmup_epochs=5", "trainer.max_epochs=3"], r"scheduler.warmup_epochs=5 must be in \[0, trainer.max_epochs=3\)"),
    (["trainer.topk=[0]"], r"trainer.topk=.* must be a list of positive integers"),
    (["data.std=[0.0]"], r"data.std=\[0.0\] must be positive"),
    (["augment=basic", "augment.transforms.1._target_=torchvision.transforms.v2.RandomHorizontalFlipp"],
     r"augment.transforms\[1\]._target_='torchvision.transforms.v2.RandomHorizontalFlipp'.*did you mean RandomHorizontalFlip"),
    (["augment=basic", "augment.transforms.0._target_=torchvision.transforms.v3.RandomCrop"],
     r"augment.transforms\[0\]._target_=.*module 'torchvision.transforms.v3' cannot be imported"),
    (["augment/mix=mixup", "augment.mix.mixup_alpha=-1"], r"augment.mix.mixup_alpha=-1 must be a number >= 0"),
    (["augment/mix=cutmix", "augment.mix.prob=2"], r"augment.mix.prob=2 must be in \[0, 1\]"),
    (["data.mean=[0.1,0.2]"], r"data.mean=\[0.1, 0.2\] must list one value per channel \(data.in_channels=1\)"),
    (["data=imagefolder", "data.resize_mode=squash", "data.root=/tmp"], r"data.resize_mode='squash' is not accepted"),
    (["data=cifar10", "data.download=maybe"], r"data.download='maybe' must be true or false"),
    (["trainer.nonfinite=ignore"], r"trainer.nonfinite='ignore' is not accepted; choose one of stop, skip, off"),
    (["trainer.handle_signals=3"], r"trainer.handle_signals=3 must be true or false"),
    (["data.input_size=[0,28]"], r"data.input_size=\[0, 28\] must be \[height, width\] with positive integers"),
    (["scheduler.interval=hour"], r"scheduler.interval='hour' is not accepted; choose one of epoch, step"),
    (["trainer.monitor_mode=up"], r"trainer.monitor_mode='up' is not accepted; choose one of auto, min, max"),
    (["data.split.val=1.5"], r"data.split.val=1.5 must be in \[0, 1\)"),
    (["logger.histogram_every_n_epochs=-1"], r"logger.histogram_every_n_epochs=-1 must be a non-negative integer"),
    (["model.init=orthogonal"], r"model.init='orthogonal' is not accepted; choose one of default, kaiming, xavier"),
    (["model.name=resnet19"], r"model.name='resnet19' is not in the zoo; choose one of .*resnet20"),
    (["paths.existing_run=keep"], r"paths.existing_run='keep' is not accepted; choose one of refuse, clear"),
    (["trainer.resume=/nonexistent/run", "finetune.checkpoint=/nonexistent/other"],
     r"trainer.resume=/nonexistent/run and finetune.checkpoint=/nonexistent/other cannot be combined"),
    # keys added with + that no code reads: refused, naming the key that was meant
    (["+trainer.max_epoch=3"], r"trainer.max_epoch is not a config key; did you mean trainer.max_epochs\?"),
    (["+data.batchsize=64"], r"data.batchsize is not a config key; did you mean data.batch_size\?"),
    (["+optimizer.learning_rate=0.1"], r"optimizer.learning_rate is not an argument of torch.optim.AdamW; did you "
                                       r"mean optimizer.lr\?"),
    (["+seeds=1"], r"seeds is not a config key; did you mean seed\?"),
    # NaN passes every comparison and inf every lower bound: both refused
    (["trainer.early_stopping.min_delta=nan"], r"trainer.early_stopping.min_delta=nan is not a finite number"),
    (["augment/mix=mixup", "augment.mix.mixup_alpha=nan"], r"augment.mix.mixup_alpha=nan is not a finite number"),
    (["optimizer.lr=inf"], r"optimizer.lr=inf is not a finite number: it must be > 0"),
    (["trainer.grad_clip=nan"], r"trainer.grad_clip=nan is not a finite number"),
    (["model=mlp", "model.dropout=nan"], r"model.dropout=nan (must be a finite number|is not a finite number)"),
    # wrong types: one line each, no traceback
    (["seed=abc"], r"seed='abc' must be an integer"),
    (["seed=99999999999999999999999"], r"seed=99999999999999999999999 must be an integer in \[-2\*\*63, 2\*\*64\)"),
    (["data.mean=[abc]"], r"data.mean=\['abc'\] must be a list of numbers, one per channel"),
    (["data.class_subset=[cat,dog]"], r"data.class_subset=\['cat', 'dog'\] must be a list of class indices"),
    (["data.class_subset=5"], r"data.class_subset=5 must be a list of class indices"),
    (["data.class_subset=[1.7,2.2,3]"], r"data.class_subset=\[1.7, 2.2, 3\] must be a list of class indices"),
    (["trainer.max_epochs=2.5"], r"trainer.max_epochs=2.5 must be a positive integer"),
    (["trainer.deterministic=yes"], r"trainer.deterministic='yes' must be true or false"),
    (["model=mlp", "model.hidden=[64,abc]"], r"model.hidden\[1\]='abc' must be a positive integer"),
    (["optimizer=sgd", "+optimizer.betas=[0.9,0.99]"], r"optimizer.betas is not an argument of torch.optim.SGD"),
]


@pytest.mark.parametrize("overrides,message", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_value_is_rejected_before_training(make_cfg, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        train(make_cfg(*overrides, run="bad"), overrides=overrides)
    assert not (tmp_path / "bad" / "checkpoints").exists()


def test_the_catalogue_holds_thirty_distinct_bad_inputs_whose_messages_name_the_key():
    """test_bad_value_is_rejected_before_training checks each message against its pattern; here: there are 30+
    distinct cases, and every pattern names a key the case sets (so the user is told which key is wrong)."""
    assert len({tuple(o) for o, _ in BAD}) >= 30
    for overrides, pattern in BAD:
        keys = [o.split("=", 1)[0].lstrip("+") for o in overrides]
        named = [k for k in keys if k.replace(".", "\\.") in pattern or k in pattern]
        assert named, (overrides, pattern)


def test_all_problems_are_reported_at_once(make_cfg):
    with pytest.raises(ConfigError, match="^3 problems in the config") as info:
        train(make_cfg("optimizer.lr=0", "data.batch_size=0", "trainer.loss=l1"), overrides=[])
    text = str(info.value)
    assert text.startswith("3 problems in the config")
    assert "optimizer.lr" in text and "data.batch_size" in text and "trainer.loss" in text


def test_missing_checkpoint_for_resume(make_cfg, tmp_path):
    missing = tmp_path / "no_such_run"
    with pytest.raises(ConfigError, match=f"trainer.resume={missing}: no such file or directory"):
        train(make_cfg(f"trainer.resume={missing}"), overrides=[])
    empty = tmp_path / "empty_run"
    empty.mkdir()
    with pytest.raises(ConfigError, match="no checkpoint in that directory.*last.ckpt"):
        train(make_cfg(f"trainer.resume={empty}"), overrides=[])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_cuda_requested_without_cuda(make_cfg):
    with pytest.raises(ConfigError, match="trainer.device=cuda but CUDA is not available.*trainer.device=auto or cpu"):
        train(make_cfg("trainer.device=cuda"), overrides=[])


def test_cli_unknown_group_option_lists_the_choices(run_cli, tmp_path):
    done = run_cli("train", "optimizer=adamm", cwd=tmp_path)
    assert done.returncode != 0
    out = done.stdout + done.stderr
    assert "Could not find 'optimizer/adamm'" in out
    for name in ("sgd", "adagrad", "rmsprop", "adam", "adamw"):
        assert name in out
    assert not (tmp_path / "outputs").exists() or not list((tmp_path / "outputs").rglob("*.ckpt"))


@pytest.mark.parametrize("override,meant", [("trainer.max_epoch=3", "trainer.max_epochs"),
                                             ("optimizer.learning_rate=0.1", "optimizer.lr"),
                                             ("data.batchsize=64", "data.batch_size"),
                                             ("logger.histograms_every_n_epochs=2", "logger.histogram_every_n_epochs"),
                                             ("sed=1", "seed")])
def test_an_override_of_a_key_that_does_not_exist_names_the_closest_one(override, meant):
    """Hydra refuses these itself, with exit status 1 and without the key that was meant: cnnlab checks first."""
    with pytest.raises(ConfigError, match=f"{override.split('=')[0]} is not a config key; did you mean {meant}\\?"):
        check_override_keys([override], config_dir())


def test_overrides_of_existing_keys_and_other_forms_pass_the_key_check():
    check_override_keys(["trainer.max_epochs=3", "-m", "optimizer=sgd,adam", "optimizer.momentum=0.8",
                         "augment.transforms.1._target_=x", "data.num_workers=3", "+new.key=1", "~trainer.resume", "hydra.run.dir=/tmp/x",
                         "augment/mix=mixup", "data.split.val=0.2", "model.layers=[]", "--config-name", "train",
                         "experiment=lenet5_classic"], config_dir())


@pytest.mark.parametrize("args", [["trainer.max_epoch=3"], ["+trainer.max_epoch=3"], ["seed=abc"],
                                  ["trainer.grad_clip=nan"]])
def test_cli_refuses_typos_nan_and_wrong_types_with_exit_2_and_one_line(run_cli, tmp_path, args):
    done = run_cli("train", *args, cwd=tmp_path)
    out = done.stdout + done.stderr
    assert done.returncode == 2, out
    assert "error: " in out and "Traceback" not in out
    assert not (tmp_path / "outputs").exists() or not list((tmp_path / "outputs").rglob("*.ckpt"))


def test_cli_bad_value_exits_2_with_one_line(run_cli, tmp_path):
    done = run_cli("train", "optimizer.lr=-1", cwd=tmp_path)
    assert done.returncode == 2
    assert "error: optimizer.lr=-1 must be > 0" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_first_line_of_an_error_is_its_message_s_first_line_or_its_type():
    assert first_line(OSError("disk full\nmore detail")) == "disk full"
    assert first_line(RuntimeError("  \n")) == "RuntimeError"
