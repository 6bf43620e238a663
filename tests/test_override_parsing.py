"""The one reading of a command-line override that the pre-Hydra checks, cnnlab-eval, cnnlab-tune's plan and
the run records share."""

from __future__ import annotations

import pytest

from cnnlab.config.overrides import override_key, split_override, without_hydra
from cnnlab.run.records import parse_overrides
from cnnlab.search.plan import last_wins


@pytest.mark.parametrize("arg, expected", [
    ("optimizer.lr=0.1", ("optimizer.lr", "0.1", True)),
    ("+trainer.ema.decay=0.99", ("trainer.ema.decay", "0.99", True)),
    ("++data.root=/a=b", ("data.root", "/a=b", True)),  # only the first '=' splits
    ("~logger", ("logger", "", False)),
    ("model=resnet20", ("model", "resnet20", True)),
])
def test_an_override_splits_into_its_key_and_value_without_hydras_prefixes(arg, expected):
    assert split_override(arg) == expected
    assert override_key(arg) == expected[0]


def test_hydras_own_overrides_are_set_apart():
    assert without_hydra(["hydra.run.dir=x", "+hydra.job.chdir=true", "optimizer=sgd", "hydra=1"]) == \
        ["optimizer=sgd", "hydra=1"]


def test_the_records_and_the_search_read_keys_the_same_way():
    args = ["+x=1", "optimizer.lr=0.1", "~y", "++x=2", "hydra.run.dir=d"]
    assert parse_overrides(args) == {"x": "2", "optimizer.lr": "0.1", "y": ""}
    assert last_wins(args) == ["optimizer.lr=0.1", "~y", "++x=2", "hydra.run.dir=d"]
