"""Given a FineTuneJob of several nodes, its output must be shared: `kubetune validate` and the API server (the
CRD's rule) refuse one whose output.path would be each worker's own emptyDir, naming the field and the fixes,
unless output.ephemeral says the user accepts it; `kubetune run` (every node on one machine) is not concerned."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from kubetune.controller.children import JobRef, WorkerContext, build_worker_pod
from kubetune.spec import SpecError, parse_job
from kubetune.spec.models import API_GROUP, API_VERSION, PLURAL

NFS = {"name": "shared", "source": {"nfs": {"server": "nfs.example", "path": "/exports/runs"}}}
HOST = {"name": "local", "source": {"hostPath": {"path": "/mnt/runs"}}}


def document(nodes: int = 2, output: dict[str, Any] | None = None, **kubernetes: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": "FineTuneJob",
        "metadata": {"name": "shared-output"},
        "spec": {
            "model": {"name": "prajjwal1/bert-tiny"},
            "dataset": {"name": "glue", "config": "sst2", "textFields": ["sentence"]},
            "distribution": {"nodes": nodes},
            "output": output or {"path": "/output"},
            "kubernetes": kubernetes,
        },
    }


# (document, accepted on a cluster?)
CASES: dict[str, tuple[dict[str, Any], bool]] = {
    "one node": (document(nodes=1), True),
    "two nodes, emptyDir": (document(), False),
    "two nodes, emptyDir outputVolume": (document(outputVolume={"mountPath": "/output"}), False),
    "two nodes, claim": (document(outputVolume={"claimName": "runs", "mountPath": "/output"}), True),
    "two nodes, claim above output.path": (
        document(output={"path": "/data/run-1"}, outputVolume={"claimName": "runs", "mountPath": "/data"}),
        True,
    ),
    "two nodes, claim elsewhere": (
        document(output={"path": "/output"}, outputVolume={"claimName": "runs", "mountPath": "/out"}),
        False,
    ),
    "two nodes, nfs overlay": (
        document(podOverlay={"volumes": [NFS], "volumeMounts": [{"name": "shared", "mountPath": "/output"}]}),
        True,
    ),
    "two nodes, hostPath overlay": (
        document(podOverlay={"volumes": [HOST], "volumeMounts": [{"name": "local", "mountPath": "/output"}]}),
        False,
    ),
    "two nodes, ephemeral accepted": (document(output={"path": "/output", "ephemeral": True}), True),
    # Issue 13: checkpoints and the model in a bucket are durable and reach every node.
    "two nodes, object storage": (
        document(output={"path": "/output", "objectStorage": {"uri": "s3://models/run-1"}}),
        True,
    ),
    "two nodes, object storage for the model only": (
        document(
            output={"path": "/output", "objectStorage": {"uri": "s3://models/run-1", "checkpoints": False}}
        ),
        False,
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_kubetune_validate_refuses_a_multi_node_output_on_no_shared_volume(name: str) -> None:
    doc, accepted = CASES[name]
    parse_job(doc)  # the local runner's nodes share one disk: valid there, whatever the volumes
    if accepted:
        parse_job(doc, for_cluster=True)
        return
    with pytest.raises(SpecError) as caught:
        parse_job(doc, for_cluster=True)
    (problem,) = caught.value.problems
    assert problem.field == "spec.output.path"
    for fix in ("kubernetes.outputVolume", "podOverlay", "output.ephemeral: true"):
        assert fix in problem.message


def test_a_shared_overlay_volume_at_output_path_replaces_the_default_empty_dir() -> None:
    spec = parse_job(CASES["two nodes, nfs overlay"][0], for_cluster=True).spec
    pod = build_worker_pod(WorkerContext(JobRef("shared-output", "ns", "uid"), spec, 1, 0, "trainer:1"), 1)
    mounts = {m["mountPath"]: m["name"] for m in pod["spec"]["containers"][0]["volumeMounts"]}
    assert mounts["/output"] == "shared", "no second (emptyDir) mount at the same path"
    assert "output" not in {v["name"] for v in pod["spec"]["volumes"]}


@pytest.mark.cluster
def test_the_api_server_refuses_the_same_jobs(
    kube_cluster: Any, kube_namespace: str, finetunejob_crd: None
) -> None:
    """The CRD's CEL rule agrees with `kubetune validate` on every case (server-side dry-run creates)."""
    api = client.CustomObjectsApi(kube_cluster.api_client())
    verdicts: dict[str, bool] = {}
    for name, (doc, _) in CASES.items():
        try:
            api.create_namespaced_custom_object(
                API_GROUP, API_VERSION, kube_namespace, PLURAL, doc, dry_run="All"
            )
            verdicts[name] = True
        except ApiException as error:
            assert error.status == 422, error.body
            assert "spec.output.path" in (error.body or ""), error.body
            verdicts[name] = False
    assert verdicts == {name: accepted for name, (_, accepted) in CASES.items()}
