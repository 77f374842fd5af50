"""Every permission the operator uses, in one place (the Helm chart's ClusterRole is built from this list).

Exactly the verbs the code calls, plus what kopf itself needs (watching, Events, peering, discovery).
"""

from __future__ import annotations

from typing import Any

from kubetune.spec.models import API_GROUP, PLURAL

OPERATOR_RULES: list[dict[str, Any]] = [
    # The FineTuneJobs: watched (kopf), read fresh each reconcile, deleted after ttlSecondsAfterFinished.
    {"apiGroups": [API_GROUP], "resources": [PLURAL], "verbs": ["get", "list", "watch", "delete"]},
    # Status written by the operator (merge patch). Holding get/patch here is also what lets the operator
    # grant the per-job progress Role (RBAC forbids granting what one does not hold).
    {"apiGroups": [API_GROUP], "resources": [f"{PLURAL}/status"], "verbs": ["get", "patch"]},
    # Children carry an ownerReference with blockOwnerDeletion: true. With the
    # OwnerReferencesPermissionEnforcement admission plugin (OpenShift enables it) setting that needs
    # `update` on the owner's finalizers subresource; without it every child would be refused (403).
    {"apiGroups": [API_GROUP], "resources": [f"{PLURAL}/finalizers"], "verbs": ["update"]},
    # Worker pods: watched (kopf), listed fresh, created, deleted on gang restart/suspend/finish.
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "create", "delete"]},
    # Services and ConfigMaps are watched (kopf, only the operator's, by label selector) so that one deleted
    # by someone is created again at once.
    {
        "apiGroups": [""],
        "resources": ["services", "configmaps"],
        "verbs": ["get", "list", "watch", "create", "patch", "delete"],
    },
    # Job-level children: created, converged by server-side apply when the job controls them, replaced when
    # a deleted earlier job of the same name left them behind.
    {"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["get", "create", "patch", "delete"]},
    {
        "apiGroups": ["rbac.authorization.k8s.io"],
        "resources": ["roles", "rolebindings"],
        "verbs": ["get", "create", "patch", "delete"],
    },
    # Events for every phase transition (core/v1, as kubectl describe shows them).
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
    {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
    # kopf: peering (two replicas, one active), and the resource/namespace observation it does at startup.
    {
        "apiGroups": ["kopf.dev"],
        "resources": ["kopfpeerings", "clusterkopfpeerings"],
        "verbs": ["get", "list", "watch", "patch"],
    },
    {
        "apiGroups": ["apiextensions.k8s.io"],
        "resources": ["customresourcedefinitions"],
        "verbs": ["list", "watch"],
    },
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
]


# Only with the Kueue integration (`--kueue`, Helm value kueue.enabled): one Workload per queued job
# (created, watched, deleted when the job ends or is suspended; its status patched to hand it back to its queue
# after a preemption, as Kueue's own job integrations do), and the two kinds its admission refers to (read).
KUEUE_RULES: list[dict[str, Any]] = [
    {
        "apiGroups": ["kueue.x-k8s.io"],
        "resources": ["workloads"],
        "verbs": ["get", "list", "watch", "create", "delete"],
    },
    {"apiGroups": ["kueue.x-k8s.io"], "resources": ["workloads/status"], "verbs": ["patch"]},
    {"apiGroups": ["kueue.x-k8s.io"], "resources": ["resourceflavors"], "verbs": ["get"]},
    {"apiGroups": ["scheduling.k8s.io"], "resources": ["priorityclasses"], "verbs": ["get"]},
]


# Only with the coscheduling integration (`--coscheduling`, Helm value coscheduling.enabled): one PodGroup per
# job that asks for one (spec.kubernetes.podGroupPolicy), written like the other children: created, read when
# it exists already, converged by server-side apply when the job controls it, replaced when a deleted earlier
# job of the same name left it. Not watched (no list/watch): it is ensured again at every new attempt, and the
# garbage collector deletes it with the job.
COSCHEDULING_RULES: list[dict[str, Any]] = [
    {
        "apiGroups": ["scheduling.x-k8s.io"],
        "resources": ["podgroups"],
        "verbs": ["get", "create", "patch", "delete"],
    },
]


def cluster_role(
    name: str = "kubetune-operator", kueue: bool = False, coscheduling: bool = False
) -> dict[str, Any]:
    """OPERATOR_RULES (plus KUEUE_RULES with `kueue`, COSCHEDULING_RULES with `coscheduling`) as a
    ClusterRole manifest."""
    rules = OPERATOR_RULES + (KUEUE_RULES if kueue else []) + (COSCHEDULING_RULES if coscheduling else [])
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "kubetune"}},
        "rules": [dict(rule) for rule in rules],
    }
