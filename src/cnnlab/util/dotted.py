"""A dotted name like 'torch.optim.SGD' -> its module, imported, and the name it should hold."""

from __future__ import annotations

import importlib
from types import ModuleType


def import_parent(target: str) -> tuple[ModuleType, str]:
    """(the module before the last dot, imported; the last part). ImportError when the module cannot be imported."""
    module_name, _, name = str(target).rpartition(".")
    return importlib.import_module(module_name), name
