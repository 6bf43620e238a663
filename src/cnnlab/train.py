"""`python -m cnnlab.train`: the entry point torchrun and scripts start; the command is cnnlab.cli.train.

The module is also what `cnnlab.train` names once it is imported (Python binds a submodule to its package's
attribute), so calling it calls the Python API's cnnlab.api.train: `cnnlab.train(...)` works either way.
"""

import sys
import types

from cnnlab.cli.train import main


class _CallableModule(types.ModuleType):
    def __call__(self, *overrides, **keys):
        from cnnlab.api import train

        return train(*overrides, **keys)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    main()
