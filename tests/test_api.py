"""The package's face: what a notebook imports from ``ecovae``, each with an example that runs as written."""

from __future__ import annotations

import doctest
import importlib
import inspect
import subprocess
import sys

import pytest

import ecovae

MODULES = sorted({f"ecovae.{m}" for m in ecovae._EXPORTS.values()} | {"ecovae", "ecovae.latent_map"})


def test_every_public_name_is_there_with_an_example():
    for name in ecovae.__all__:
        obj = getattr(ecovae, name)
        assert obj.__name__ == name and ">>>" in (inspect.getdoc(obj) or ""), f"{name} has no example"
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        ecovae.nothing  # noqa: B018


def test_importing_the_package_imports_none_of_its_stages():
    """``import ecovae`` (and the command line's --help) stays instant: torch and the stages load on first use."""
    code = "import sys, ecovae; print(sorted(m for m in sys.modules if m.startswith(('ecovae.', 'torch'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("module", MODULES)
def test_the_examples_hold(module):
    result = doctest.testmod(
        importlib.import_module(module), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    )
    assert result.attempted > 0 and result.failed == 0
