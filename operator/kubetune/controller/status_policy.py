"""Only the operator writes the operator's status fields, enforced by the API server (issue 11, item 7).

The workers' per-job Role lets rank 0 patch `finetunejobs/status` of its own job, because live progress goes
there. RBAC cannot say *which* fields: with that token alone a worker (or remote model code run with
trustRemoteCode) could set `phase: Succeeded` or reset `failedAttempts`, and the operator would act on it.
A ValidatingAdmissionPolicy closes that: for every ServiceAccount other than the operator's, an update of a
FineTuneJob's status may change only `status.progress`, `status.metrics`, `status.lastCheckpoint` and
`status.tracking` (where the run's trackers are, issue 13); every other status field must stay as it was. (lastCheckpoint sizes the grace of the operator's deletes, which
`controller.grace` caps: a worker that lies about it delays only its own deletion, and boundedly.) (People with RBAC rights to the status, e.g. cluster admins, are not matched.)

Why not Kubeflow Trainer's KEP-2779 route (a progress endpoint in the operator, authenticated with a
projected token and a TokenReview, so workers hold no API rights at all)? It needs a network path from every
worker to the operator and a listener in it (NetworkPolicies, TLS); the policy gives the same guarantee with
only the API server in between, and the chart installs it (`rbac.statusWriterPolicy`).

The CEL expression is generated from the status model, so a new status field is protected without anyone
remembering to: `charts/kubetune/files/status-guard.cel` holds it (`kubetune crd -o` writes it beside the CRD;
tests/operator checks that it is current).
"""

from __future__ import annotations

from typing import Any

from kubetune.spec.models import API_GROUP, PLURAL
from kubetune.spec.status import FineTuneJobStatus

# The status fields rank 0's StatusSink writes (kubetune.status_sink).
WORKER_STATUS_FIELDS = ("progress", "metrics", "lastCheckpoint", "tracking")
GUARD_FILE = "charts/kubetune/files/status-guard.cel"
MESSAGE = (
    "only the kubetune operator may change a FineTuneJob's status other than status.progress, "
    "status.metrics, status.lastCheckpoint and status.tracking"
)


def operator_status_fields() -> list[str]:
    """The status fields (camelCase) that only the operator may change."""
    fields = [info.alias or name for name, info in FineTuneJobStatus.model_fields.items()]
    return [f for f in fields if f not in WORKER_STATUS_FIELDS]


def status_guard_expression() -> str:
    """CEL: true when the update leaves every operator status field as it was (absent stays absent)."""
    unchanged = [
        f"(has(object.status.{f}) ? has(oldObject.status.{f}) && object.status.{f} == oldObject.status.{f}"
        f" : !has(oldObject.status.{f}))"
        for f in operator_status_fields()
    ]
    untouched = [f"!has(object.status.{f})" for f in operator_status_fields()]
    return (
        "!has(oldObject.status) ? (!has(object.status) || ("
        + " && ".join(untouched)
        + ")) : (has(object.status) && "
        + " && ".join(unchanged)
        + ")"
    )


def render_guard_file() -> str:
    return status_guard_expression() + "\n"


def status_writer_policy(
    name: str, operator_username: str, namespaces: list[str] | None = None
) -> list[dict[str, Any]]:
    """The ValidatingAdmissionPolicy and its Binding, as the chart renders them (`namespaces`: bind only in
    these, by the kubernetes.io/metadata.name label; None: everywhere)."""
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": [API_GROUP],
                        "apiVersions": ["*"],
                        "operations": ["UPDATE"],
                        "resources": [f"{PLURAL}/status"],
                    }
                ]
            },
            "matchConditions": [
                {
                    "name": "not-the-operator",
                    "expression": f"request.userInfo.username != '{operator_username}'",
                },
                {
                    "name": "service-accounts",
                    "expression": "request.userInfo.username.startsWith('system:serviceaccount:')",
                },
            ],
            "validations": [
                {"expression": status_guard_expression(), "message": MESSAGE, "reason": "Forbidden"}
            ],
        },
    }
    binding: dict[str, Any] = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {"policyName": name, "validationActions": ["Deny"]},
    }
    if namespaces is not None:
        binding["spec"]["matchResources"] = {
            "namespaceSelector": {
                "matchExpressions": [
                    {"key": "kubernetes.io/metadata.name", "operator": "In", "values": list(namespaces)}
                ]
            }
        }
    return [policy, binding]


if __name__ == "__main__":
    from pathlib import Path

    Path(GUARD_FILE).write_text(render_guard_file())
    print(f"wrote {GUARD_FILE}")
