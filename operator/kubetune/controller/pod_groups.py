"""Gang scheduling without Kueue, as pure functions: the PodGroup that the coscheduling plugin of
kubernetes-sigs/scheduler-plugins reads (spec.kubernetes.podGroupPolicy.coscheduling).

The plugin holds every pod labelled scheduling.x-k8s.io/pod-group=<group> in its Permit stage until
`minMember` pods of the group have a node, then lets them all bind; past `scheduleTimeoutSeconds` it releases
them and backs the group off. With `minResources` it first checks that the cluster could hold the whole gang
at all. The gang semantics are that scheduler's: kubetune only creates the PodGroup (a child of the job, like
the Service: create-only, owned, garbage-collected with it) and labels the workers
(`children.pod_group_plugin`).

One PodGroup per job, named like it, for every attempt: a gang restart deletes the old workers and creates the
next attempt only once they are gone (`plan`), so the group's pods, which the plugin counts, are only ever one
attempt's. A PodGroup per attempt would leave one more object behind at every restart.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from kubetune.controller import names
from kubetune.controller.children import JobRef, owner_reference
from kubetune.controller.quantity import parse_quantity
from kubetune.spec.models import FineTuneJobSpec

POD_GROUP_GROUP = "scheduling.x-k8s.io"
POD_GROUP_VERSION = "v1alpha1"
POD_GROUP_API_VERSION = f"{POD_GROUP_GROUP}/{POD_GROUP_VERSION}"
POD_GROUP_PLURAL = "podgroups"
# Why a PodGroup could not be created when the API server does not serve the kind (HTTP 404 on create).
MISSING_CRD_FIX = (
    f"the API server does not serve {POD_GROUP_PLURAL}.{POD_GROUP_GROUP}/{POD_GROUP_VERSION}, which "
    "spec.kubernetes.podGroupPolicy.coscheduling needs: install the scheduler-plugins PodGroup CRD and a "
    "scheduler running its coscheduling plugin (github.com/kubernetes-sigs/scheduler-plugins, "
    "manifests/coscheduling), or remove spec.kubernetes.podGroupPolicy"
)


def wants_pod_group(spec: FineTuneJobSpec) -> bool:
    """True when the job asks for a PodGroup (spec.kubernetes.podGroupPolicy.coscheduling)."""
    policy = spec.kubernetes.pod_group_policy
    return policy is not None and policy.coscheduling is not None


def _times(quantity: str, factor: int) -> str:
    """`quantity` x `factor` as a Kubernetes quantity: '2Gi' x 3 = '6Gi'; '500m' x 3 = '1500m'; otherwise
    the plain number ('1.5' x 3 = '4.5'). Raises ValueError for what is not a quantity."""
    whole = re.fullmatch(r"(\d+)([A-Za-z]*)", quantity.strip())
    if whole and whole.group(2) in (
        "",
        "m",
        "k",
        "M",
        "G",
        "T",
        "P",
        "E",
        "Ki",
        "Mi",
        "Gi",
        "Ti",
        "Pi",
        "Ei",
    ):
        return f"{int(whole.group(1)) * factor}{whole.group(2)}"
    total = Decimal(parse_quantity(quantity)) * factor
    return format(total.normalize(), "f")


def gang_requests(worker_pod: dict[str, Any], nodes: int) -> dict[str, str]:
    """What `nodes` workers shaped like `worker_pod` request in all (its containers' requests, per resource):
    the PodGroup's minResources. Raises ValueError for a request that is not a quantity."""
    per_pod: dict[str, str] = {}
    for container in worker_pod["spec"].get("containers") or []:
        for resource, value in ((container.get("resources") or {}).get("requests") or {}).items():
            if resource in per_pod:
                summed = Decimal(parse_quantity(per_pod[resource])) + Decimal(parse_quantity(str(value)))
                per_pod[resource] = format(summed.normalize(), "f")
            else:
                per_pod[resource] = str(value)
    return {resource: _times(value, nodes) for resource, value in sorted(per_pod.items())}


def build_pod_group(job: JobRef, spec: FineTuneJobSpec, worker_pod: dict[str, Any]) -> dict[str, Any] | None:
    """The job's PodGroup: minMember = distribution.nodes, minResources = the whole gang's requests (from
    `worker_pod`, the first worker as built), scheduleTimeoutSeconds from the policy; owned by the job.
    None when the job asks for no PodGroup."""
    policy = spec.kubernetes.pod_group_policy
    if policy is None or policy.coscheduling is None:
        return None
    nodes = spec.distribution.nodes
    return {
        "apiVersion": POD_GROUP_API_VERSION,
        "kind": "PodGroup",
        "metadata": {
            "name": names.pod_group_name(job.name),
            "namespace": job.namespace,
            "labels": {**names.job_labels(job.name), names.LABEL_COMPONENT: "pod-group"},
            "ownerReferences": [owner_reference(job)],
        },
        "spec": {
            "minMember": nodes,
            "minResources": gang_requests(worker_pod, nodes),
            "scheduleTimeoutSeconds": policy.coscheduling.schedule_timeout_seconds,
        },
    }
