"""Pod manifests for the real-node tests: a locked-down container (uid 1000, read-only root filesystem,
every capability dropped, no privilege escalation) running a Python script on a chosen real node."""

from __future__ import annotations

from typing import Any

from tests.kube.node_fixtures import REAL_NODE_SELECTOR

RUN_AS_USER = 1000


def restricted_pod(
    name: str,
    image: str,
    script: str,
    *,
    node: str | None = None,
    memory_limit: str = "128Mi",
    grace_seconds: int = 30,
    labels: dict[str, str] | None = None,
    hostname: str | None = None,
    subdomain: str | None = None,
    finalizers: list[str] | None = None,
    volumes: list[dict[str, Any]] | None = None,
    volume_mounts: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Returns a Pod manifest that runs `python3 -c script` once (restartPolicy Never) on a real node
    (`node` to pin one, e.g. "real-1"), as a non-root user on a read-only root filesystem."""
    node_selector = dict(REAL_NODE_SELECTOR)
    if node:
        node_selector["kubernetes.io/hostname"] = node
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "nodeSelector": node_selector,
        "terminationGracePeriodSeconds": grace_seconds,
        "securityContext": {"runAsUser": RUN_AS_USER, "runAsGroup": RUN_AS_USER, "runAsNonRoot": True},
        "containers": [
            {
                "name": "main",
                "image": image,
                "imagePullPolicy": "Never",
                "command": ["python3", "-u", "-c", script],
                "resources": {
                    "requests": {"cpu": "10m", "memory": memory_limit},
                    "limits": {"memory": memory_limit},
                },
                "securityContext": {
                    "readOnlyRootFilesystem": True,
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                },
            }
        ],
    }
    if volumes:
        spec["volumes"] = volumes
        spec["containers"][0]["volumeMounts"] = volume_mounts or []
    if hostname:
        spec["hostname"] = hostname
    if subdomain:
        spec["subdomain"] = subdomain
    metadata: dict[str, Any] = {"name": name, "labels": labels or {}}
    if finalizers:
        metadata["finalizers"] = finalizers
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}
