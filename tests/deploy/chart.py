"""Running the real helm binary on charts/kubetune: lint, template, and the rendered objects as dicts.

helm comes from the control-plane build (hack/cluster/build.sh, pinned in hack/cluster/versions.env): looked
for in $KUBETUNE_CLUSTER_BIN, then the build's cache folder, then PATH. Without it the tests skip, or fail
when KUBETUNE_REQUIRE_CLUSTER=1 (CI).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kubetune"
VERSIONS_ENV = REPO / "hack" / "cluster" / "versions.env"
RELEASE = "kubetune"
NAMESPACE = "kubetune-system"


def pinned_versions() -> dict[str, str]:
    """Returns hack/cluster/versions.env as a dict (KUBERNETES_VERSION, HELM_VERSION, ...)."""
    values = {}
    for line in VERSIONS_ENV.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key] = value.strip().strip('"')
    return values


def kubernetes_version() -> str:
    """The project's Kubernetes version without the v, e.g. 1.36.3."""
    return pinned_versions()["KUBERNETES_VERSION"].lstrip("v")


def find_tool(name: str) -> Path | None:
    """Returns the path of kubectl or helm from the control-plane build or PATH, or None."""
    candidates = []
    explicit = os.environ.get("KUBETUNE_CLUSTER_BIN")
    if explicit:
        candidates.append(Path(explicit) / name)
    try:
        from tests.kube.binaries import cached_bin_dir

        candidates.append(cached_bin_dir() / name)
    except Exception:  # the cache key script may be missing in a partial checkout: fall back to PATH
        pass
    on_path = shutil.which(name)
    if on_path:
        candidates.append(Path(on_path))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def require_tool(name: str) -> Path:
    """Returns the tool's path; skips the test without it (fails when KUBETUNE_REQUIRE_CLUSTER=1)."""
    found = find_tool(name)
    if found is None:
        reason = f"{name} not found (KUBETUNE_CLUSTER_BIN, the hack/cluster/build.sh cache, PATH)"
        if os.environ.get("KUBETUNE_REQUIRE_CLUSTER") == "1":
            pytest.fail(f"{reason}; run `bash hack/cluster/build.sh`", pytrace=False)
        pytest.skip(reason)
    return found


@dataclass
class HelmResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


class Helm:
    """The helm binary, run with a private HOME so that no user's repositories or plugins leak in."""

    def __init__(self, binary: Path, home: Path):
        self.binary = binary
        self.env = {
            **os.environ,
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }

    def run(self, *args: str, check: bool = True, timeout: float = 120) -> HelmResult:
        """Runs helm; raises AssertionError with its output when `check` and it fails."""
        result = subprocess.run(
            [str(self.binary), *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            check=False,
        )
        outcome = HelmResult(result.returncode, result.stdout, result.stderr)
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({result.returncode}):\n{outcome.output}")
        return outcome

    def template_args(self, values: dict[str, Any] | None, values_dir: Path, *extra: str) -> list[str]:
        """Arguments of `helm template` for these values (written to a file in `values_dir`)."""
        args = [
            "template",
            RELEASE,
            str(CHART),
            "--namespace",
            NAMESPACE,
            "--kube-version",
            kubernetes_version(),
        ]
        if values:
            digest = hashlib.sha256(repr(values).encode()).hexdigest()[:12]
            path = values_dir / f"values-{digest}.yaml"
            path.write_text(yaml.safe_dump(values))
            args += ["--values", str(path)]
        return [*args, *extra]

    def render(self, values: dict[str, Any] | None, values_dir: Path, *extra: str) -> list[dict[str, Any]]:
        """Returns the objects `helm template` renders (hooks included, CRDs not)."""
        out = self.run(*self.template_args(values, values_dir, *extra)).stdout
        return [doc for doc in yaml.safe_load_all(out) if doc]


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    """Returns the objects of this kind (and name, when given)."""
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """Returns the single object of this kind (and name); fails the test when there are 0 or several."""
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]
