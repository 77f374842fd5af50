"""Settings shared by every test folder; each folder adds its own conftest.py for its own fixtures."""

from __future__ import annotations

import pytest

# The real local Kubernetes cluster (tests/kube/fixtures.py): kube_cluster, kube_namespace, kubectl, ...;
# with real nodes (tests/kube/node_fixtures.py): real_node_cluster, node_test_image, real_node_namespace.
pytest_plugins = ["tests.kube.fixtures", "tests.kube.node_fixtures"]


def pytest_configure(config: pytest.Config) -> None:
    """Registers the markers used across the test suite."""
    config.addinivalue_line(
        "markers",
        "cluster: needs the real local Kubernetes control plane (hack/cluster/build.sh); "
        "select with `-m cluster`, leave out with `-m 'not cluster'`",
    )
