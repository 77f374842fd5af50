"""manifests/rbac and manifests/operator: the chart rendered once for users who do not use Helm.

    python -m tests.deploy.manifests          # rewrite the files from charts/kubetune
    python -m tests.deploy.manifests --check  # exit 1 when they differ (what test_manifests.py asserts)

Rendered with the chart's defaults (cluster mode, release `kubetune` in namespace `kubetune-system`), minus
what only makes sense under Helm: the `helm test` pod and the helm.sh/chart label; managed-by says kubectl.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.chart import CHART, NAMESPACE, REPO, Helm, find_tool

MANIFESTS = REPO / "manifests"
RBAC_KINDS = ("Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
HEADER = """\
# Rendered from charts/kubetune by `python -m tests.deploy.manifests`: do not edit (a test compares them).
# Apply order for a cluster without Helm (see docs/deploy.md):
#   kubectl apply -f manifests/crd/ -f manifests/operator/kopf-peering-crds.yaml
#   kubectl wait --for=condition=Established crd/finetunejobs.kubetune.io crd/clusterkopfpeerings.kopf.dev
#   kubectl apply -f manifests/rbac/ -f manifests/operator/
"""


def _plain(obj: dict[str, Any]) -> dict[str, Any]:
    """The object without Helm's bookkeeping labels."""
    for metadata in (obj["metadata"], obj.get("spec", {}).get("template", {}).get("metadata", {})):
        labels = metadata.get("labels", {})
        labels.pop("helm.sh/chart", None)
        if labels.get("app.kubernetes.io/managed-by") == "Helm":
            labels["app.kubernetes.io/managed-by"] = "kubectl"
    return obj


def _dump(objects: list[dict[str, Any]]) -> str:
    return HEADER + "".join("---\n" + yaml.safe_dump(o, sort_keys=False) for o in objects)


def render_manifests(helm: Helm) -> dict[Path, str]:
    """Returns {path under the repo: text} of every file this module owns in manifests/."""
    with tempfile.TemporaryDirectory() as scratch:
        objects = helm.render(None, Path(scratch))
    objects = [_plain(o) for o in objects if "helm.sh/hook" not in o["metadata"].get("annotations", {})]
    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": NAMESPACE, "labels": {"app.kubernetes.io/part-of": "kubetune"}},
    }
    rbac = [namespace] + [o for o in objects if o["kind"] in RBAC_KINDS]
    operator = [o for o in objects if o["kind"] not in RBAC_KINDS]
    return {
        MANIFESTS / "rbac" / "rbac.yaml": _dump(rbac),
        MANIFESTS / "operator" / "operator.yaml": _dump(operator),
        MANIFESTS / "operator" / "kopf-peering-crds.yaml": (CHART / "crds" / "kopf-peering.yaml").read_text(),
    }


def main(argv: list[str] | None = None) -> int:
    """Writes (or with --check compares) the rendered manifests; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 when a file differs from a fresh render")
    args = parser.parse_args(argv)
    binary = find_tool("helm")
    if binary is None:
        print("helm not found: run `bash hack/cluster/build.sh` or put helm on PATH", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as home:
        files = render_manifests(Helm(binary, Path(home)))
    stale = [path for path, text in files.items() if not path.exists() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"{path.relative_to(REPO)} is stale: run python -m tests.deploy.manifests", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(files[path])
        print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
