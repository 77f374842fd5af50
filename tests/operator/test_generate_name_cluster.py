"""Given a FineTuneJob with both a name and a generateName (the name wins; the API server still checks the
generateName, once apimachinery's maskTrailingDash has turned its last two characters into an 'a' when it ends in
'-'), the real API server and `kubetune validate` decide alike, at the edges where a mask of one character would
differ: 'a..-' and 'a-.-' (accepted), a lone '-' (refused)."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from kubetune.spec import SpecError, parse_job
from kubetune.spec.models import API_GROUP, API_VERSION, KIND, PLURAL

pytestmark = pytest.mark.cluster

GENERATE_NAMES = ["a..-", "a-.-", "-", "job-", "a.-", "Job-"]


def document(generate_name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "metadata": {"name": "job", "generateName": generate_name},
        "spec": {"model": {"name": "m"}, "dataset": {"name": "glue"}},
    }


def validate_accepts(doc: dict[str, Any]) -> bool:
    try:
        parse_job(doc, for_cluster=True)
    except SpecError:
        return False
    return True


def test_the_api_server_and_validate_agree_on_a_generate_name_beside_a_name(
    kube_cluster: Any, kube_namespace: str, finetunejob_crd: None
) -> None:
    api = client.CustomObjectsApi(kube_cluster.api_client())
    decided: dict[str, tuple[bool, bool]] = {}
    for generate_name in GENERATE_NAMES:
        doc = document(generate_name)
        try:
            api.create_namespaced_custom_object(
                API_GROUP, API_VERSION, kube_namespace, PLURAL, doc, dry_run="All"
            )
            server = True
        except ApiException as error:
            assert error.status == 422, error.body
            assert "metadata.generateName" in (error.body or ""), error.body
            server = False
        decided[generate_name] = (server, validate_accepts(doc))
    assert all(server == ours for server, ours in decided.values()), decided
    assert {name for name, (server, _) in decided.items() if not server} == {"-", "Job-"}, decided
