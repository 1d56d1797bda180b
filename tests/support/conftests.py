"""Reaching ``tests/conftest.py`` from other conftests and test modules."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

ROOT_CONFTEST = Path(__file__).resolve().parent.parent / "conftest.py"


def root_conftest(config: pytest.Config) -> ModuleType:
    """``tests/conftest.py`` as pytest loaded it.

    Every conftest outside a package is imported under the module name ``conftest``, so
    ``from conftest import make_settings`` would pick whichever was loaded last.
    """
    for plugin in config.pluginmanager.get_plugins():
        file = getattr(plugin, "__file__", None)
        if isinstance(plugin, ModuleType) and file and Path(file).resolve() == ROOT_CONFTEST:
            return plugin
    raise LookupError(f"{ROOT_CONFTEST} is not loaded")
