"""The operator's few API calls, as plain REST: JSON over urllib3 (the official client's HTTP library), with
the credentials kopf's login functions read (`controller.connection`).

Objects go in and out as the API's JSON dicts (camelCase), the same form the pure planner works on, so no
conversion to and from the official client's generated model classes is needed (nor that package: importing
it costs the operator about 30 MB of memory).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import kopf
import urllib3

from kubetune.controller import connection
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
# One connection per concurrent reconcile thread (a pool of 4 would serialise them).
CONNECTION_POOL_SIZE = 64


class ApiError(RuntimeError):
    """A non-2xx answer of the API server; `status` is the HTTP code, `reason` the Status reason."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(f"HTTP {status} {reason}: {message}")


class ApiConnection:
    """HTTPS to the API server on one urllib3 connection pool (thread-safe), with the credentials `login`
    returns. It logs in again when the API server refuses them (401: a rotated or expired token) and retries
    that request once, and every REFRESH_SECONDS anyway, as client-go re-reads a token file (the kubelet
    rotates a pod's projected ServiceAccount token; the old one stays valid until it expires)."""

    REFRESH_SECONDS = 60.0

    def __init__(self, login: Callable[[], kopf.ConnectionInfo] = connection.login) -> None:
        """Raises kopf.LoginError (from `login`) when there are no credentials."""
        self._login = login
        self._refreshing = threading.Lock()
        self._tls: kopf.ConnectionInfo | None = None
        self._pool: urllib3.PoolManager | None = None
        self._use(login())

    def _use(self, info: kopf.ConnectionInfo) -> None:
        """Send the next requests with `info`; a new pool only when its TLS or proxy changed (the pooled
        connections stay open across token refreshes)."""
        tls = dataclasses.replace(
            info, username=None, password=None, scheme=None, token=None, expiration=None
        )
        pool = self._pool
        if pool is None or tls != self._tls:
            context = info.as_ssl_context()  # (kopf's: CA and client certificate from data or files)
            if info.proxy_url:
                pool = urllib3.ProxyManager(
                    info.proxy_url, num_pools=4, maxsize=CONNECTION_POOL_SIZE, ssl_context=context
                )
            else:
                pool = urllib3.PoolManager(num_pools=4, maxsize=CONNECTION_POOL_SIZE, ssl_context=context)
            self._tls, self._pool = tls, pool
        # One tuple, swapped at once: a concurrent request reads the old one or the new one, whole.
        self._current = (info.server.rstrip("/"), info.as_http_headers(), pool)
        self._logged_in_at = time.monotonic()

    def _refresh(self, seen: tuple[str, dict[str, str], urllib3.PoolManager], wait: bool) -> None:
        """Log in again, unless another thread did since `seen` was read (or, without `wait`, is doing it)."""
        if not self._refreshing.acquire(blocking=wait):
            return
        try:
            if self._current is seen:
                self._use(self._login())
        finally:
            self._refreshing.release()

    def send(self, method: str, path: str, body: Any, content_type: str) -> tuple[int, bytes]:
        """Send one request (`path` with its query string); returns (HTTP status, response body).
        Raises urllib3's errors when the API server cannot be reached, kopf.LoginError when logging in
        again fails."""
        current = self._current
        if time.monotonic() - self._logged_in_at > self.REFRESH_SECONDS:
            try:
                self._refresh(current, wait=False)
            except (kopf.LoginError, OSError) as error:  # keep the credentials that still work
                self._logged_in_at = time.monotonic()
                logger.warning(
                    "could not refresh the API server credentials (the old ones are kept): %s", error
                )
            current = self._current
        payload = None if body is None else json.dumps(body)
        for attempt in range(2):
            server, credentials, pool = current
            response = pool.request(
                method,
                server + path,
                body=payload,
                headers={"Accept": "application/json", "Content-Type": content_type, **credentials},
                timeout=urllib3.Timeout(connect=REQUEST_TIMEOUT[0], read=REQUEST_TIMEOUT[1]),
                # urllib3's default retries, as the official client had them: a pooled connection the API
                # server closed is retried on a fresh one (reads only for idempotent methods).
                retries=urllib3.Retry.DEFAULT,
            )
            if response.status != 401 or attempt:
                return response.status, response.data
            self._refresh(current, wait=True)  # (a 401 is answered before the request is acted on)
            current = self._current
        raise AssertionError("unreachable")


def load_client_config() -> ApiConnection:
    """A connection with the in-cluster ServiceAccount, else $KUBECONFIG / ~/.kube/config
    (`connection.login`). Raises kopf.LoginError when neither says where the API server is."""
    return ApiConnection()


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

    def __init__(self, api: ApiConnection) -> None:
        self.api = api

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
        status_code, data = self.api.send(method, path, body, content_type)
        if not 200 <= status_code < 300:
            text = data.decode("utf-8", "replace")
            try:
                status = json.loads(text)
                raise ApiError(status_code, status.get("reason", ""), status.get("message", text))
            except json.JSONDecodeError:
                raise ApiError(status_code, "", text[:500]) from None
        if not decode:
            return {}
        return json.loads(data) if data else {}

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
