"""hack/coscheduling's Go module stays on the control plane's Kubernetes (issue 9: CI minutes).

The coscheduling scheduler compiles only its plugin because every other package it builds is the control plane's,
at the same module versions: with -trimpath a compiled package names its module's required version, so one
module at another version would recompile every Kubernetes package above it. hack/coscheduling/pin.sh checks this
when it writes go.mod; these tests check the committed files, without Go, so that a bump of
hack/cluster/versions.env or of the control plane's go.mod without `bash hack/coscheduling/pin.sh` fails here."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CLUSTER_VERSIONS = REPO / "hack" / "cluster" / "versions.env"
CLUSTER_GO_MOD = REPO / "hack" / "cluster" / "modules" / "kubernetes" / "go.mod"
COSCHEDULING_GO_MOD = REPO / "hack" / "coscheduling" / "modules" / "coscheduling" / "go.mod"
REQUIREMENT = re.compile(r"^\s*(?:require\s+)?(\S+)\s+(v\S+)(?:\s*//.*)?$")


def block(go_mod: str, keyword: str) -> list[str]:
    """The lines inside every `keyword ( ... )` block of go_mod's text."""
    lines: list[str] = []
    for match in re.finditer(rf"^{keyword} \(\n(.*?)^\)", go_mod, re.MULTILINE | re.DOTALL):
        lines.extend(line.strip() for line in match.group(1).splitlines() if line.strip())
    return lines


def requirements(go_mod: str) -> dict[str, str]:
    """module path -> required version, from go_mod's require lines and blocks."""
    found: dict[str, str] = {}
    lines = block(go_mod, "require") + [line for line in go_mod.splitlines() if line.startswith("require ")]
    for line in lines:
        match = REQUIREMENT.match(line)
        if match and match.group(1) != "(":
            found[match.group(1)] = match.group(2)
    return found


def test_the_scheduler_requires_the_control_planes_kubernetes_with_its_replaces() -> None:
    version = re.search(r"^KUBERNETES_VERSION=(\S+)$", CLUSTER_VERSIONS.read_text(), re.MULTILINE)
    assert version is not None
    ours = COSCHEDULING_GO_MOD.read_text()
    assert requirements(ours)["k8s.io/kubernetes"] == version.group(1), "run bash hack/coscheduling/pin.sh"
    assert block(ours, "replace") == block(CLUSTER_GO_MOD.read_text(), "replace"), (
        "run bash hack/coscheduling/pin.sh"
    )


def test_every_module_both_build_is_at_the_control_planes_version() -> None:
    ours = requirements(COSCHEDULING_GO_MOD.read_text())
    theirs = requirements(CLUSTER_GO_MOD.read_text())
    shared = sorted(set(ours) & set(theirs))
    # client-go, apiserver, their dependencies: nearly all of what the scheduler compiles
    assert len(shared) > 80
    differing = {m: (ours[m], theirs[m]) for m in shared if ours[m] != theirs[m]}
    assert differing == {}, f"run bash hack/coscheduling/pin.sh; (here, control plane): {differing}"
    # Only the plugin's own dependency is new (github.com/patrickmn/go-cache, the plugin's permitted-group cache).
    assert set(ours) - set(theirs) - {"k8s.io/kubernetes"} <= {"github.com/patrickmn/go-cache"}
