"""What spec.kubernetes puts on the worker pods, at `kubectl apply`: the real API server, given the generated CRD,
refuses every case of tests/spec/test_pod_fields_spec.py that `kubetune validate` refuses (bad tolerations,
affinity, quantities, image pull secrets, volume sources) and accepts the rest, naming the same field; and the
worker pod the operator builds for each accepted case is one the API server takes (server-side dry-run creates with strict field validation, as kubectl sends them: an unknown field is a 400 naming it)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from kubetune.controller.children import JobRef, WorkerContext, build_worker_pod
from kubetune.spec import parse_spec
from kubetune.spec.models import API_GROUP, API_VERSION, PLURAL

from tests.spec.test_pod_fields_spec import CASES

pytestmark = pytest.mark.cluster


def worker_pod_problem(core: Any, namespace: str, created: dict[str, Any]) -> str:
    """Why the API server refuses the worker pod the operator builds for an accepted job ("" when it takes it):
    a dry-run create, after creating the ServiceAccount the pod runs as (its admission looks it up)."""
    spec = parse_spec(created["spec"])
    pod = build_worker_pod(WorkerContext(JobRef("job", namespace, "uid"), spec, 0, 0, "trainer:test"), 1)
    account = pod["spec"]["serviceAccountName"]
    try:
        core.create_namespaced_service_account(namespace, {"metadata": {"name": account}})
    except ApiException as error:
        if error.status != 409:
            return f"its ServiceAccount {account}: {error.body}"
    try:
        core.create_namespaced_pod(namespace, pod, dry_run="All", field_validation="Strict")
    except ApiException as error:
        return str(json.loads(error.body or "{}").get("message") or error.body)
    return ""


def test_the_api_server_decides_every_case_as_kubetune_validate(
    kube_cluster: Any, kube_namespace: str, finetunejob_crd: None
) -> None:
    api = client.CustomObjectsApi(kube_cluster.api_client())
    core = client.CoreV1Api(kube_cluster.api_client())
    wrong: list[str] = []
    pods_taken = 0
    for name, (doc, field, _) in sorted(CASES.items()):
        try:
            created = api.create_namespaced_custom_object(
                API_GROUP, API_VERSION, kube_namespace, PLURAL, doc, dry_run="All", field_validation="Strict"
            )
            if field:
                wrong.append(f"{name}: accepted, but kubetune validate refuses {field}")
            else:
                problem = worker_pod_problem(core, kube_namespace, created)
                if problem:
                    wrong.append(f"{name}: accepted, but the API server refuses its worker pod: {problem}")
                else:
                    pods_taken += 1
        except ApiException as error:
            status = json.loads(error.body or "{}")
            if error.status == 400:  # strict decoding: an unknown field, named in the message
                named = re.findall(r'unknown field "([^"]+)"', status.get("message", ""))
            elif error.status == 422:
                named = [c.get("field", "") for c in (status.get("details") or {}).get("causes") or []]
            else:
                wrong.append(f"{name}: HTTP {error.status}: {error.body}")
                continue
            if not field:
                wrong.append(f"{name}: refused, but kubetune validate accepts it: {status.get('message')}")
            elif not any(n == field or n.startswith(field + ".") or field.startswith(n + ".") for n in named):
                wrong.append(f"{name}: refused naming {named}, not {field}: {status.get('message')}")
    assert not wrong, "\n".join(wrong)
    assert pods_taken == sum(1 for _, field, _ in CASES.values() if not field)
