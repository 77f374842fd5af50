"""Given a FineTuneJob whose spec.kubernetes holds tolerations, affinity, resource quantities, image pull secrets
or extra volumes, `kubetune validate` refuses what the API server would refuse on a worker pod (issue 11), and
its message names the field, the bad value and the fix; what Kubernetes accepts is accepted and reaches the pod
unchanged.

Pure: tests/operator/test_pod_fields_cel.py sends the same CASES to a real API server (the CRD's patterns and
CEL rules must decide the same), and the spec fuzz checks the agreement on generated documents."""

from __future__ import annotations

from typing import Any

import pytest
from kubetune.controller.children import JobRef, WorkerContext, build_worker_pod
from kubetune.spec import SpecError, parse_job
from kubetune.spec.kube_names import extended_resource_name_problem, quantity_problem
from kubetune.spec.pod_fields import VOLUME_SOURCE_KINDS


def document(**kubernetes: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "job"},
        "spec": {"model": {"name": "m"}, "dataset": {"name": "glue"}, "kubernetes": kubernetes},
    }


def anti_affinity(term: dict[str, Any]) -> dict[str, Any]:
    return {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}}


def node_affinity(*expressions: dict[str, Any], fields: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    term: dict[str, Any] = {"matchExpressions": list(expressions)}
    if fields:
        term["matchFields"] = fields
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}}


HOST = {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app": "x"}}}
ZONE = "topology.kubernetes.io/zone"
GOOD_AFFINITY = {
    **node_affinity(
        {"key": "gpu.example/class", "operator": "In", "values": ["h100", "a100"]},
        {"key": "gpu.example/memory-gb", "operator": "Gt", "values": ["40"]},
        {"key": "spot", "operator": "DoesNotExist"},
        fields=[{"key": "metadata.name", "operator": "NotIn", "values": ["node-7"]}],
    ),
    "podAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [
            {
                "weight": 100,
                "podAffinityTerm": {
                    "topologyKey": ZONE,
                    "labelSelector": {"matchExpressions": [{"key": "team", "operator": "Exists"}]},
                    "namespaces": ["data"],
                    "matchLabelKeys": ["kubetune.io/job"],
                },
            }
        ]
    },
    "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [HOST]},
}

# name -> (document, the field a refusal names ("" when accepted), a text the message holds)
CASES: dict[str, tuple[dict[str, Any], str, str]] = {
    # --- label and annotation keys against kubetune's own (labels are case-sensitive, annotations are not) ---
    "a label key that is kubetune's own but for case": (
        document(labels={"app.kubernetes.io/Name": "x"}),
        "",
        "",
    ),
    "a label key that is kubetune's own": (
        document(labels={"app.kubernetes.io/name": "x"}),
        "spec.kubernetes.labels",
        "kubetune's own",
    ),
    "an annotation key in kubetune's domain but for case": (
        document(annotations={"Kubetune.io/x": "y"}),
        "spec.kubernetes.annotations",
        "kubetune's own",
    ),
    # --- tolerations ---
    "toleration Equal": (
        document(tolerations=[{"key": "nvidia.com/gpu", "operator": "Equal", "value": "present"}]),
        "",
        "",
    ),
    "toleration Exists, no key (every taint)": (document(tolerations=[{"operator": "Exists"}]), "", ""),
    "toleration NoExecute for 60 s": (
        document(tolerations=[{"key": "spot", "effect": "NoExecute", "tolerationSeconds": 60}]),
        "",
        "",
    ),
    "toleration Exists with a value": (
        document(tolerations=[{"key": "gpu", "operator": "Exists", "value": "yes"}]),
        "spec.kubernetes.tolerations[0]",
        "remove value",
    ),
    "toleration without key and Equal": (
        document(tolerations=[{"operator": "Equal", "value": "x"}]),
        "spec.kubernetes.tolerations[0]",
        "operator: Exists",
    ),
    "toleration without key nor operator": (
        document(tolerations=[{"effect": "NoSchedule"}]),
        "spec.kubernetes.tolerations[0]",
        "key is empty",
    ),
    "tolerationSeconds without NoExecute": (
        document(tolerations=[{"key": "a", "effect": "NoSchedule", "tolerationSeconds": 5}]),
        "spec.kubernetes.tolerations[0]",
        "effect: NoExecute",
    ),
    "toleration with an unknown operator": (
        document(tolerations=[{"key": "a", "operator": "Gt", "value": "1"}]),
        "spec.kubernetes.tolerations[0].operator",
        "Gt",
    ),
    "toleration with an unknown effect": (
        document(tolerations=[{"key": "a", "effect": "NoRun"}]),
        "spec.kubernetes.tolerations[0].effect",
        "NoRun",
    ),
    "toleration key not a label key": (
        document(tolerations=[{"key": "bad key!", "operator": "Exists"}]),
        "spec.kubernetes.tolerations[0].key",
        "bad key!",
    ),
    "toleration key with a prefix over 253 characters": (
        document(tolerations=[{"key": "a" * 60 + "." + "b" * 60 + "." + "c" * 60 + "." + "d" * 72 + "/k"}]),
        "spec.kubernetes.tolerations[0].key",
        "253",
    ),
    "toleration value not a label value": (
        document(tolerations=[{"key": "a", "value": "two words"}]),
        "spec.kubernetes.tolerations[0].value",
        "two words",
    ),
    # --- affinity ---
    "affinity: every kind of term": (document(affinity=GOOD_AFFINITY), "", ""),
    "affinity with an unknown block": (
        document(affinity={"nodeAfinity": {}}),
        "spec.kubernetes.affinity.nodeAfinity",
        "nodeAffinity",
    ),
    "node selector In without values": (
        document(affinity=node_affinity({"key": "a", "operator": "In", "values": []})),
        "spec.kubernetes.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0]"
        ".matchExpressions[0]",
        "at least one value",
    ),
    "node selector Exists with values": (
        document(affinity=node_affinity({"key": "a", "operator": "Exists", "values": ["x"]})),
        "spec.kubernetes.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0]"
        ".matchExpressions[0]",
        "takes no values",
    ),
    "node selector Gt with two values": (
        document(affinity=node_affinity({"key": "a", "operator": "Gt", "values": ["1", "2"]})),
        "spec.kubernetes.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0]"
        ".matchExpressions[0]",
        "exactly one value",
    ),
    "node selector Lt with a word": (
        document(affinity=node_affinity({"key": "a", "operator": "Lt", "values": ["many"]})),
        "spec.kubernetes.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0]"
        ".matchExpressions[0]",
        "'many'",
    ),
    "node selector with an unknown operator": (
        document(affinity=node_affinity({"key": "a", "operator": "Like", "values": ["x"]})),
        "spec.kubernetes.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0]"
        ".matchExpressions[0].operator",
        "Like",
    ),
    "node selector key not a label key": (
        document(affinity=node_affinity({"key": "-a", "operator": "Exists"})),
        "spec.kubernetes.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0]"
        ".matchExpressions[0].key",
        "-a",
    ),
    "node field selector on another field": (
        document(
            affinity=node_affinity(fields=[{"key": "spec.unschedulable", "operator": "In", "values": ["x"]}])
        ),
        "spec.kubernetes.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0]"
        ".matchFields[0].key",
        "metadata.name",
    ),
    "required node affinity without terms": (
        document(
            affinity={
                "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}
            }
        ),
        "spec.kubernetes.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms",
        "at least 1",
    ),
    "preferred term weight 0": (
        document(
            affinity={
                "nodeAffinity": {
                    "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 0, "preference": {}}]
                }
            }
        ),
        "spec.kubernetes.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].weight",
        "greater than or equal to 1",
    ),
    "pod anti-affinity without topologyKey": (
        document(affinity=anti_affinity({"labelSelector": {"matchLabels": {"app": "x"}}})),
        "spec.kubernetes.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].topologyKey",
        "required",
    ),
    "pod anti-affinity with an empty topologyKey": (
        document(affinity=anti_affinity({**HOST, "topologyKey": ""})),
        "spec.kubernetes.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].topologyKey",
        "''",
    ),
    "label selector Gt (node selectors only)": (
        document(
            affinity=anti_affinity(
                {
                    **HOST,
                    "labelSelector": {"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]},
                }
            )
        ),
        "spec.kubernetes.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].labelSelector"
        ".matchExpressions[0].operator",
        "Gt",
    ),
    "label selector NotIn without values": (
        document(
            affinity=anti_affinity(
                {**HOST, "labelSelector": {"matchExpressions": [{"key": "a", "operator": "NotIn"}]}}
            )
        ),
        "spec.kubernetes.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].labelSelector"
        ".matchExpressions[0]",
        "at least one value",
    ),
    "matchLabels with a bad key": (
        document(affinity=anti_affinity({**HOST, "labelSelector": {"matchLabels": {"a b": "x"}}})),
        "spec.kubernetes.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].labelSelector"
        ".matchLabels",
        "a b",
    ),
    "matchLabels with a bad value": (
        document(affinity=anti_affinity({**HOST, "labelSelector": {"matchLabels": {"app": "-x"}}})),
        "spec.kubernetes.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].labelSelector"
        ".matchLabels.app",
        "-x",
    ),
    "a namespace that is not a DNS label": (
        document(affinity=anti_affinity({**HOST, "namespaces": ["Team_A"]})),
        "spec.kubernetes.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].namespaces[0]",
        "Team_A",
    ),
    "matchLabelKeys without labelSelector": (
        document(affinity=anti_affinity({"topologyKey": ZONE, "matchLabelKeys": ["app"]})),
        "spec.kubernetes.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0]",
        "set labelSelector",
    ),
    "a key in matchLabelKeys and mismatchLabelKeys": (
        document(affinity=anti_affinity({**HOST, "matchLabelKeys": ["app"], "mismatchLabelKeys": ["app"]})),
        "spec.kubernetes.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0]",
        "['app']",
    ),
    # --- quantities ---
    "quantities of every form": (
        document(
            resources={"cpu": "7500m", "memory": "64Gi", "shmSize": "1e9"},
            outputVolume={"mountPath": "/output", "sizeLimit": "20G"},
            cacheVolume={"mountPath": "/cache", "sizeLimit": ".5Ti"},
            podOverlay={"extraResources": {"rdma/hca_shared_devices_a": "1", "example.com/fpga": "2k"}},
        ),
        "",
        "",
    ),
    "quantities at the edges of the grammar": (
        document(
            resources={"cpu": "+.5", "memory": "1e99", "shmSize": "1."},
            outputVolume={"mountPath": "/output", "sizeLimit": "1n"},
            podOverlay={
                "extraResources": {"example.com/a": "1E", "example.com/b": "9Ei", "example.com/c": "1e99"}
            },
        ),
        "",
        "",
    ),
    "memory in words": (
        document(resources={"memory": "64 gigabytes"}),
        "spec.kubernetes.resources.memory",
        "'64 gigabytes' is not a Kubernetes quantity",
    ),
    "memory with a lowercase binary suffix": (
        document(resources={"memory": "64gi"}),
        "spec.kubernetes.resources.memory",
        "64gi",
    ),
    "negative cpu": (document(resources={"cpu": "-2"}), "spec.kubernetes.resources.cpu", "'-2'"),
    "shm with a fractional exponent": (
        document(resources={"shmSize": "1e1.5"}),
        "spec.kubernetes.resources.shmSize",
        "1e1.5",
    ),
    "emptyDir size with a unit only": (
        document(outputVolume={"mountPath": "/output", "sizeLimit": "Gi"}),
        "spec.kubernetes.outputVolume.sizeLimit",
        "'Gi'",
    ),
    "half a device": (
        document(podOverlay={"extraResources": {"rdma/hca": "0.5"}}),
        "spec.kubernetes.podOverlay.extraResources.rdma/hca",
        "whole number",
    ),
    "an extended resource in kubernetes.io": (
        document(podOverlay={"extraResources": {"kubernetes.io/gpu": "1"}}),
        "spec.kubernetes.podOverlay",
        "kubernetes.io/gpu",
    ),
    "a gpu resource name without a domain": (
        document(resources={"gpuResourceName": "gpu"}),
        "spec.kubernetes.resources.gpuResourceName",
        "domain/name",
    ),
    "a gpu resource name with capitals": (
        document(resources={"gpuResourceName": "NVIDIA.com/gpu"}),
        "spec.kubernetes.resources.gpuResourceName",
        "NVIDIA.com/gpu",
    ),
    # --- image pull secrets ---
    "image pull secrets": (document(imagePullSecrets=["registry-creds", "ghcr.io"]), "", ""),
    "an image pull secret with capitals": (
        document(imagePullSecrets=["Registry_Creds"]),
        "spec.kubernetes.imagePullSecrets[0]",
        "Registry_Creds",
    ),
    "an empty image pull secret": (
        document(imagePullSecrets=[""]),
        "spec.kubernetes.imagePullSecrets[0]",
        "must be a DNS subdomain",
    ),
    # --- volume sources ---
    "volumes of several kinds": (
        document(
            podOverlay={
                "volumes": [
                    {"name": "ib", "source": {"hostPath": {"path": "/dev/infiniband"}}},
                    {"name": "data", "source": {"nfs": {"server": "nfs.example", "path": "/data"}}},
                    {"name": "scratch", "source": {"emptyDir": {}}},
                    {"name": "info", "source": {"downwardAPI": {"items": []}}},
                    {"name": "creds", "source": {"secret": {"secretName": "s3"}}},
                ]
            }
        ),
        "",
        "",
    ),
    "a volume with two kinds": (
        document(
            podOverlay={"volumes": [{"name": "v", "source": {"emptyDir": {}, "hostPath": {"path": "/x"}}}]}
        ),
        "spec.kubernetes.podOverlay.volumes[0].source",
        "emptyDir, hostPath",
    ),
    "a volume with no kind": (
        document(podOverlay={"volumes": [{"name": "v", "source": {}}]}),
        "spec.kubernetes.podOverlay.volumes[0].source",
        "exactly one source kind",
    ),
    "a volume of an unknown kind": (
        document(podOverlay={"volumes": [{"name": "v", "source": {"hostpath": {"path": "/x"}}}]}),
        "spec.kubernetes.podOverlay.volumes[0].source.hostpath",
        "hostPath",
    ),
    "a volume kind that is not an object": (
        document(podOverlay={"volumes": [{"name": "v", "source": {"emptyDir": "yes"}}]}),
        "spec.kubernetes.podOverlay.volumes[0].source.emptyDir",
        "dictionary",
    ),
    "a volume name that is not a DNS label": (
        document(podOverlay={"volumes": [{"name": "My_Volume", "source": {"emptyDir": {}}}]}),
        "spec.kubernetes.podOverlay.volumes[0].name",
        "My_Volume",
    ),
}


def problems(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """(field, message) of every problem `kubetune validate` finds in `doc` (empty: valid)."""
    try:
        parse_job(doc, for_cluster=True)
    except SpecError as error:
        return [(p.field, p.message) for p in error.problems]
    return []


@pytest.mark.parametrize("name", sorted(CASES))
def test_kubetune_validate_refuses_what_a_pod_cannot_take_and_names_the_field(name: str) -> None:
    doc, field, text = CASES[name]
    found = problems(doc)
    if not field:
        assert found == [], found
        return
    assert [f for f, _ in found] == [field], found
    assert text in found[0][1], found


def test_what_is_accepted_reaches_the_worker_pod_as_written() -> None:
    doc = document(
        affinity=GOOD_AFFINITY,
        tolerations=[{"key": "spot", "effect": "NoExecute", "tolerationSeconds": 60}],
        resources={"cpu": "7500m", "memory": "64Gi", "shmSize": "16Gi"},
        imagePullSecrets=["registry-creds"],
        podOverlay={
            "extraResources": {"rdma/hca": "1"},
            "volumes": [{"name": "ib", "source": {"hostPath": {"path": "/dev/infiniband"}}}],
        },
    )
    spec = parse_job(doc, for_cluster=True).spec
    pod = build_worker_pod(WorkerContext(JobRef("job", "ns", "uid"), spec, 0, 0, "trainer:test"), 1)["spec"]
    assert pod["affinity"] == GOOD_AFFINITY
    assert {"key": "spot", "effect": "NoExecute", "tolerationSeconds": 60} in pod["tolerations"]
    assert pod["imagePullSecrets"] == [{"name": "registry-creds"}]
    assert {"name": "ib", "hostPath": {"path": "/dev/infiniband"}} in pod["volumes"]
    resources = pod["containers"][0]["resources"]
    assert resources["limits"] == {"cpu": "7500m", "memory": "64Gi", "nvidia.com/gpu": "1", "rdma/hca": "1"}
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}} in pod["volumes"]


def test_the_quantity_grammar_is_kubernetes_own() -> None:
    # (apimachinery's resource.Quantity: <sign><number><suffix>; here >= 0, the exponent of at most 2 digits)
    for good in (
        "0",
        "1",
        "007",
        "1.",
        ".5",
        "+2",
        "500m",
        "1n",
        "3u",
        "2k",
        "64Gi",
        "1Ei",
        "8E",
        "1e3",
        "1E-2",
        "1e99",
    ):
        assert quantity_problem(good) is None, good
    for bad in (
        "",
        "-1",
        "1K",
        "1gi",
        "1 Gi",
        " 1",
        "Gi",
        ".",
        "1e",
        "1e1.5",
        "0x10",
        "1Gib",
        "1e100",
        "1e-100",
    ):
        assert quantity_problem(bad), bad
    for whole in ("1", "8", "2k", "1Ki", "1e3"):
        assert quantity_problem(whole, whole=True) is None, whole
    for fraction in ("0.5", "500m", "1.0", "1e-3", "1n"):
        assert quantity_problem(fraction, whole=True), fraction


def test_extended_resource_names_follow_kubernetes() -> None:
    for good in ("nvidia.com/gpu", "amd.com/gpu", "rdma/hca_shared_devices_a", "example.com/Fpga.1"):
        assert extended_resource_name_problem(good) is None, good
    for bad in (
        "gpu",
        "kubernetes.io/gpu",
        "requests.example.com/x",
        "Example.com/x",
        "a/b/c",
        "x/" + "a" * 64,
    ):
        assert extended_resource_name_problem(bad), bad
    assert extended_resource_name_problem("a" * 244 + "/x") is None
    assert "244" in str(extended_resource_name_problem("a" * 245 + "/x"))


def test_every_core_v1_volume_source_kind_is_known() -> None:
    for kind in VOLUME_SOURCE_KINDS:
        doc = document(podOverlay={"volumes": [{"name": "v", "source": {kind: {}}}]})
        assert problems(doc) == [], kind
