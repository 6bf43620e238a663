"""The lab book: the lessons of the CNN course as one-command experiments with recorded pages (cnnlab-lab).

The package is also what `cnnlab.lab` names once it is imported (Python binds a subpackage to its parent's
attribute), so calling it calls the Python API's cnnlab.api.lab: `cnnlab.lab("optimizers")` works either way.
"""

import sys
import types


class _CallablePackage(types.ModuleType):
    def __call__(self, lesson, *overrides, **keys):
        from cnnlab.api import lab  # the API, loaded when the package is called

        return lab(lesson, *overrides, **keys)


sys.modules[__name__].__class__ = _CallablePackage
