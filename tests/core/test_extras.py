"""Optional parts: a missing one fails in one line naming its extra, and the extras named in code are
the ones pyproject.toml defines, holding the packages the code imports."""

from __future__ import annotations

import importlib.metadata
import sys

import pytest
import tomllib
from helpers import REPO
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from lookalike.core.errors import LookalikeError
from lookalike.core.extras import EXTRA_OF, MissingExtra, import_extra


def test_a_missing_extra_is_one_line_naming_the_extra_and_its_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "prefect_dask", None)  # as if the dask extra were not installed
    with pytest.raises(MissingExtra) as caught:
        import_extra("prefect_dask", "embeddings.dask_workers")
    assert isinstance(caught.value, LookalikeError)  # the CLI prints it as one line, Prefect does not retry it
    assert str(caught.value) == (
        "embeddings.dask_workers needs the dask extra (prefect_dask is not installed): pip install 'lookalike[dask]'"
    )
    assert "\n" not in str(caught.value)


def test_an_installed_extra_is_imported():
    assert import_extra("s3fs", "artifacts_root=s3://b").__name__ == "s3fs"


def test_every_extra_named_in_code_is_defined_in_pyproject_and_holds_the_package():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    distributions = importlib.metadata.packages_distributions()
    for module, extra in EXTRA_OF.items():
        assert extra in extras, f"{module}: no extra {extra!r} in pyproject.toml"
        held = {canonicalize_name(Requirement(r).name) for r in extras[extra]}
        assert {canonicalize_name(d) for d in distributions[module]} & held, f"{module} is not in the {extra} extra"
