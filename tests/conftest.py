"""Settings shared by every test folder; each folder adds its own conftest.py for its own fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator

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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under KUBETUNE_REQUIRE_CLUSTER=1 (CI, `make test`) a skipped test is a failed one: whatever a test
    could not start (a binary, the cluster, a tool) must show as red with its reason, never pass silently."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if (
        report.skipped
        and not hasattr(report, "wasxfail")
        and os.environ.get("KUBETUNE_REQUIRE_CLUSTER") == "1"
    ):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped, which KUBETUNE_REQUIRE_CLUSTER=1 does not allow: {reason}"
