"""trainer.limit_val_batches / limit_test_batches: a smoke run validates and tests only the first N batches of
each split, says so in the log, and its metrics cover exactly those images."""

from __future__ import annotations

import logging

import pytest
import torch

from cnnlab.engine.callbacks import Callback
from cnnlab.errors import ConfigError
from cnnlab.run.lifecycle import train

TINY = ["data=digits", "data.input_size=[8,8]", "model=mlp", "model.hidden=[16]", "augment=none", "logger=none",
        "trainer.summary=none", "trainer.max_epochs=2", "trainer.limit_train_batches=2", "data.eval_batch_size=16"]


class CountTested(Callback):
    """Keeps how many images the test pass counted (the confusion matrix sums over every tested image)."""

    def __init__(self):
        self.images = None

    def on_test_end(self, trainer, metrics, confusion, classes):
        self.images = int(confusion.sum())


def test_limits_cut_validation_and_test_to_their_first_batches(make_cfg, caplog):
    tested = CountTested()
    with caplog.at_level(logging.INFO, logger="cnnlab"):
        metrics = train(make_cfg(*TINY, "trainer.limit_val_batches=2", "trainer.limit_test_batches=3"),
                        overrides=[], callbacks=(tested,))
    assert tested.images == 3 * 16
    assert "test/acc" in metrics and "best_val/loss" in metrics
    said = caplog.text
    assert "only the first 2 of" in said and "trainer.limit_val_batches=2" in said
    assert "only the first 3 of" in said and "trainer.limit_test_batches=3" in said
    assert said.count("trainer.limit_val_batches=2") == 1  # once per run, not every epoch


def test_without_limits_every_test_image_counts(make_cfg):
    tested = CountTested()
    train(make_cfg(*TINY, "trainer.max_epochs=1"), overrides=[], callbacks=(tested,))
    assert tested.images > 3 * 16  # the whole test split (~180 of the 1,797 digits)


@pytest.mark.parametrize("value", ["0", "-1", "1.5", "many"])
def test_a_limit_that_is_not_a_positive_integer_is_refused(make_cfg, value):
    with pytest.raises(ConfigError, match="trainer.limit_val_batches"):
        train(make_cfg(*TINY, f"trainer.limit_val_batches={value}"), overrides=[])


def test_evaluate_model_counts_only_the_first_batches():
    from cnnlab.engine.evaluation import evaluate_model

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    batches = [(torch.randn(5, 4), torch.randint(0, 3, (5,))) for _ in range(6)]
    loss = torch.nn.CrossEntropyLoss()
    _, confusion = evaluate_model(model, batches, loss, "val", ks=(1,), device="cpu", with_confusion=True,
                                  limit_batches=2)
    assert int(confusion.sum()) == 10
    whole, first_two = (evaluate_model(model, b, loss, "val", ks=(1,), device="cpu") for b in (batches, batches[:2]))
    assert evaluate_model(model, batches, loss, "val", ks=(1,), device="cpu", limit_batches=2) == first_two != whole
