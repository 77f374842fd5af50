"""What spec.kubernetes puts on the worker pods, at `kubectl apply`: the real API server, given the generated CRD,
refuses every case of tests/spec/test_pod_fields_spec.py that `kubetune validate` refuses (bad tolerations,
affinity, quantities, image pull secrets, volume sources) and accepts the rest, naming the same field (server-side
dry-run creates with strict field validation, as kubectl sends them: an unknown field is a 400 naming it)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from kubetune.spec.models import API_GROUP, API_VERSION, PLURAL

from tests.spec.test_pod_fields_spec import CASES

pytestmark = pytest.mark.cluster


def test_the_api_server_decides_every_case_as_kubetune_validate(
    kube_cluster: Any, kube_namespace: str, finetunejob_crd: None
) -> None:
    api = client.CustomObjectsApi(kube_cluster.api_client())
    wrong: list[str] = []
    for name, (doc, field, _) in sorted(CASES.items()):
        try:
            api.create_namespaced_custom_object(
                API_GROUP, API_VERSION, kube_namespace, PLURAL, doc, dry_run="All", field_validation="Strict"
            )
            if field:
                wrong.append(f"{name}: accepted, but kubetune validate refuses {field}")
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
