"""A composed config as the schema's typed sections: what `cnnlab.run.validate.validate` returns and the
builders take (`build_data` the data source's section, the Trainer its `trainer` section, ...).

The sections are the pydantic models of `cnnlab.config.schema`, filled from a config that validation passed,
so each key is there with its type and default: builders read attributes (`trainer.max_epochs`) and never
repeat a default. `data` is the data source's own model (`DATA_SOURCES[data.name]`: an image folder's section
has `root` and `resize_mode`, a shard set's `train_shards`). The open sections whose keys are a class's
arguments (`model`, `optimizer`, `scheduler`, `augment.transforms` entries) stay as the config gives them: the
zoo entry's builder, the torch class or the transform takes them.
"""

from __future__ import annotations

from omegaconf import OmegaConf

from cnnlab.config import schema
from cnnlab.config.checks import missing_to_none
from cnnlab.config.data_schema import DATA_SOURCES, DataBase


def typed_config(cfg, kind: str = "train") -> schema.TrainConfig:
    """`cfg` (a composed DictConfig or a plain dict that validation passed) as the model of its `kind`
    (cnnlab.config.schema.CONFIGS), with `data` as its source's section (`data_section`)."""
    container = cfg if isinstance(cfg, dict) else OmegaConf.to_container(cfg, resolve=True)
    container = missing_to_none(container)
    typed = schema.CONFIGS[kind].model_validate(container)
    # model_copy(update=...) sets the field without validating it again: the dict was validated as `data` above
    return typed.model_copy(update={"data": data_section(container["data"])})


def data_section(data) -> DataBase:
    """A data config (a DictConfig section or a plain dict) as the model of its source, `DATA_SOURCES[name]`.
    Raises pydantic's ValidationError on a section validation would refuse (call validation first for the
    one-line messages)."""
    container = data if isinstance(data, dict) else OmegaConf.to_container(data, resolve=True)
    container = missing_to_none(container)
    return DATA_SOURCES[container["name"]].model_validate(container)

