"""The operator's few API calls, as plain REST on the official client's connection (auth, TLS, pooling).

Objects go in and out as the API's JSON dicts (camelCase), the same form the pure planner works on, so no
conversion to and from the client's generated model classes is needed.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.parse
from typing import Any

from kubernetes import client, config

from kubetune.controller.names import FIELD_MANAGER
from kubetune.spec.models import API_GROUP, API_VERSION, PLURAL

logger = logging.getLogger(__name__)

# kind → (API prefix, plural): the only kinds the operator writes.
_RESOURCES = {
    "Pod": ("/api/v1", "pods"),
    "Service": ("/api/v1", "services"),
    "ConfigMap": ("/api/v1", "configmaps"),
    "ServiceAccount": ("/api/v1", "serviceaccounts"),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles"),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings"),
    "FineTuneJob": (f"/apis/{API_GROUP}/{API_VERSION}", PLURAL),
    # The Kueue integration (kubetune operator --kueue): the job's Workload, and what its admission names.
    "Workload": ("/apis/kueue.x-k8s.io/v1beta2", "workloads"),
    "ResourceFlavor": ("/apis/kueue.x-k8s.io/v1beta2", "resourceflavors"),
    "PriorityClass": ("/apis/scheduling.k8s.io/v1", "priorityclasses"),
    # spec.kubernetes.podGroupPolicy.coscheduling (kubetune operator --coscheduling): the job's PodGroup.
    "PodGroup": ("/apis/scheduling.x-k8s.io/v1alpha1", "podgroups"),
}
# Kinds without a namespace.
_CLUSTER_SCOPED = frozenset({"ResourceFlavor", "PriorityClass"})
REQUEST_TIMEOUT = (5, 30)  # connect, read seconds


class ApiError(RuntimeError):
    """A non-2xx answer of the API server; `status` is the HTTP code, `reason` the Status reason."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(f"HTTP {status} {reason}: {message}")


def load_client_config() -> client.ApiClient:
    """An ApiClient from the in-cluster service account, else from KUBECONFIG / ~/.kube/config."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        # (read $KUBECONFIG now: the client module captured it at import time)
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None)
    configuration = client.Configuration.get_default_copy()
    # One connection per concurrent reconcile thread (the default pool of 4 would serialise them).
    configuration.connection_pool_maxsize = 64
    return client.ApiClient(configuration)


def resource_path(kind: str, namespace: str, name: str | None = None, subresource: str | None = None) -> str:
    """REST path of an object (or its collection when `name` is None); cluster-scoped kinds ignore
    `namespace`."""
    prefix, plural = _RESOURCES[kind]
    path = f"{prefix}/{plural}" if kind in _CLUSTER_SCOPED else f"{prefix}/namespaces/{namespace}/{plural}"
    if name:
        path += f"/{name}"
    if subresource:
        path += f"/{subresource}"
    return path


class Kube:
    """Synchronous API access for the reconcile threads."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self.api = api_client

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: dict[str, str] | None = None,
        content_type: str = "application/json",
        decode: bool = True,
    ) -> dict[str, Any]:
        """Send one request; returns the decoded JSON body (empty when not `decode`: a created pod's answer
        is the whole pod, and decoding what nobody reads costs a busy operator real CPU). Raises ApiError
        for a non-2xx answer."""
        if query:
            path += "?" + urllib.parse.urlencode(query)
        method_, url, headers, body_, post = self.api.param_serialize(
            method=method,
            resource_path=path,
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self.api.call_api(method_, url, headers, body_, post, _request_timeout=REQUEST_TIMEOUT)
        data = response.read()
        text = data.decode("utf-8") if isinstance(data, bytes) else str(data or "")
        if not 200 <= response.status < 300:
            try:
                status = json.loads(text)
                raise ApiError(response.status, status.get("reason", ""), status.get("message", text))
            except json.JSONDecodeError:
                raise ApiError(response.status, "", text[:500]) from None
        if not decode:
            return {}
        return json.loads(text) if text else {}

    # --- FineTuneJobs -------------------------------------------------------------------------------------------

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The FineTuneJob, or None when it no longer exists."""
        return self.get("FineTuneJob", namespace, name)

    def patch_job_status(
        self, namespace: str, name: str, patch: dict[str, Any], resource_version: str | None
    ) -> dict[str, Any]:
        """Merge-patch the status subresource. With `resource_version`, a concurrent write makes it fail with
        409 instead of overwriting (the caller re-reads and re-plans)."""
        body: dict[str, Any] = {"status": patch}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        return self.request(
            "PATCH",
            resource_path("FineTuneJob", namespace, name, "status"),
            body,
            content_type="application/merge-patch+json",
        )

    def delete_job(self, namespace: str, name: str, uid: str) -> None:
        """Delete the FineTuneJob (TTL); children follow by garbage collection. Gone already is fine."""
        self.delete("FineTuneJob", namespace, name, uid)

    # --- children -----------------------------------------------------------------------------------------------

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        """Pods matching a label selector, read from etcd (not a possibly stale watch cache)."""
        answer = self.request("GET", resource_path("Pod", namespace), query={"labelSelector": selector})
        items: list[dict[str, Any]] = answer.get("items", [])
        return items

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """One object, or None when it does not exist."""
        try:
            return self.request("GET", resource_path(kind, namespace, name))
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    def delete(self, kind: str, namespace: str, name: str, uid: str) -> None:
        """Delete that object if it is still the one with `uid` (gone or replaced already is fine)."""
        options = {"propagationPolicy": "Background", "preconditions": {"uid": uid}}
        try:
            self.request("DELETE", resource_path(kind, namespace, name), options, decode=False)
        except ApiError as error:
            if error.status not in (404, 409):
                raise

    def create(self, obj: dict[str, Any]) -> bool:
        """Create `obj`; returns False when an object of that name already exists (create-or-adopt)."""
        metadata = obj["metadata"]
        try:
            self.request(
                "POST",
                resource_path(obj["kind"], metadata["namespace"]),
                obj,
                query={"fieldManager": FIELD_MANAGER},
                decode=False,
            )
        except ApiError as error:
            if error.status == 409 and error.reason == "AlreadyExists":
                return False
            raise
        return True

    def apply(self, obj: dict[str, Any]) -> None:
        """Server-side apply `obj` with the operator's one field manager (creates or converges it)."""
        metadata = obj["metadata"]
        self.request(
            "PATCH",
            resource_path(obj["kind"], metadata["namespace"], metadata["name"]),
            obj,
            query={"fieldManager": FIELD_MANAGER, "force": "true"},
            content_type="application/apply-patch+yaml",
            decode=False,
        )

    def patch_status(self, kind: str, namespace: str, name: str, body: dict[str, Any]) -> None:
        """Merge-patch `body` (status, and metadata.resourceVersion to guard it) into the status subresource.
        Raises ApiError (409 when the object changed since it was read)."""
        self.request(
            "PATCH",
            resource_path(kind, namespace, name, "status"),
            body,
            content_type="application/merge-patch+json",
            decode=False,
        )

    def delete_pod(self, namespace: str, name: str, uid: str, grace_seconds: int | None = None) -> None:
        """Delete the worker pod `name` if it is still the one with `uid` (its grace period lets the trainer
        checkpoint; `grace_seconds` 0 force-deletes one stuck Terminating). Gone or replaced is fine."""
        options: dict[str, Any] = {"propagationPolicy": "Background"}
        if uid:
            options["preconditions"] = {"uid": uid}
        if grace_seconds is not None:
            options["gracePeriodSeconds"] = grace_seconds
        try:
            self.request("DELETE", resource_path("Pod", namespace, name), options, decode=False)
        except ApiError as error:
            if error.status not in (404, 409):
                raise
