import pytest

from cnnlab.util.dotted import import_parent
from cnnlab.config.checks import _import_class
from cnnlab.run.validate import _missing_class


def test_import_parent_and_both_callers():
    import collections

    assert import_parent("collections.OrderedDict") == (collections, "OrderedDict")
    with pytest.raises(ImportError, match="no_such_module_xyz"):
        import_parent("no_such_module_xyz.Thing")
    # validate names what is wrong; schema_check gives the class or None
    assert _missing_class("collections.OrderedDict") is None
    assert _missing_class("no_such_module_xyz.Thing") == "module 'no_such_module_xyz' cannot be imported"
    assert _missing_class("collections.OrderedDikt").startswith("collections has no 'OrderedDikt'; did you mean")
    assert _import_class("collections.OrderedDict") is collections.OrderedDict
    assert _import_class("no_such_module_xyz.Thing") is None
    assert _import_class("collections.namedtuple") is None  # a function, not a class
