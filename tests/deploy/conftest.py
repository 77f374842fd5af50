"""Fixtures of the deployment tests: the real helm binary, with a private home."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.deploy.chart import Helm, require_tool


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    """helm from the control-plane build (skips without it, fails when KUBETUNE_REQUIRE_CLUSTER=1)."""
    return Helm(require_tool("helm"), tmp_path_factory.mktemp("helm-home"))


@pytest.fixture(scope="session")
def values_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder for the values files the tests write."""
    return tmp_path_factory.mktemp("values")
