"""Where the API server is and how to authenticate to it, read by kopf's own login functions, so the
operator's requests (`controller.kube`) and kopf's watches use the same credentials.

- In a pod: `kopf.login_with_service_account` (the projected token, the CA bundle); the server is
  $KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT, as client-go and the official client read it (kopf's
  https://kubernetes.default.svc needs the cluster's DNS).
- Else `kopf.login_with_kubeconfig`: $KUBECONFIG (several files merged, the first value wins) or
  ~/.kube/config, its current context's token, basic auth, client certificate and CA (data or files),
  insecure-skip-tls-verify and proxy-url.
- Kubeconfigs that only the official client reads right go through its loader (`kopf.login_via_client`,
  which imports the `kubernetes` package): a user whose credentials come from a plugin or a file (`exec`,
  `auth-provider`, `tokenFile`), or a relative certificate path (relative to the kubeconfig's folder, which
  kopf's reader does not resolve). The operator leaves that package out otherwise: importing it costs about
  30 MB of memory (benchmarks/README.md, "Where the operator's memory goes").

Not read on any path: a cluster's tls-server-name (kopf's ConnectionInfo has no field for it).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import Any

import kopf
import yaml

SERVICE_HOST_ENV, SERVICE_PORT_ENV = "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"
# A kubeconfig user with one of these gets its credentials from a plugin or a file: the official client's.
PLUGIN_USER_KEYS = ("exec", "auth-provider", "tokenFile")
# Certificate paths a kubeconfig may give relative to its own folder.
PATH_KEYS = ("certificate-authority", "client-certificate", "client-key")

logger = logging.getLogger(__name__)


def login(*, settings: kopf.OperatorSettings | None = None, **kwargs: Any) -> kopf.ConnectionInfo:
    """The operator's credentials: the in-cluster ServiceAccount, else the kubeconfig (see the module's
    docstring). Also kopf's login handler (`kwargs`: what kopf passes; `settings` gives trust_env).

    Raises kopf.LoginError when neither says where the API server is, or the kubeconfig names a missing
    context, cluster or user."""
    settings = settings or kopf.OperatorSettings()
    info = kopf.login_with_service_account(settings=settings)
    if info is not None:
        return in_cluster_server(info)
    if not kubeconfig_paths():
        raise kopf.LoginError(
            "no in-cluster ServiceAccount and no kubeconfig: set KUBECONFIG to a kubeconfig file, or run "
            "the operator in a pod"
        )
    if kubeconfig_needs_official_client():
        return official_client_login(settings=settings, **kwargs)
    try:
        info = kopf.login_with_kubeconfig(settings=settings)
    except KeyError as missing:
        raise kopf.LoginError(
            f"kubeconfig {os.environ.get('KUBECONFIG') or '~/.kube/config'}: its current context names "
            f"{missing}, which it does not define; fix the context or run `kubectl config use-context NAME`"
        ) from None
    if info is None:  # (kopf's reader found no file; kubeconfig_paths said there is one: a race)
        raise kopf.LoginError("the kubeconfig disappeared while the operator read it; set KUBECONFIG")
    if not info.server:
        raise kopf.LoginError(
            "the kubeconfig's current context names a cluster without a server: add its https:// URL"
        )
    return info


def in_cluster_server(info: kopf.ConnectionInfo) -> kopf.ConnectionInfo:
    """`info` with the API server's service address from the environment kubelet sets in every pod (as
    client-go reads it); unchanged when that environment is not set."""
    host, port = os.environ.get(SERVICE_HOST_ENV), os.environ.get(SERVICE_PORT_ENV)
    if not (host and port):
        return info
    host = f"[{host}]" if ":" in host else host  # an IPv6 service address
    return dataclasses.replace(info, server=f"https://{host}:{port}")


def kubeconfig_paths() -> list[Path]:
    """The kubeconfig files as kopf's reader and kubectl find them: $KUBECONFIG's (os.pathsep-separated),
    else ~/.kube/config when it exists; empty when there is none."""
    listed = [Path(part).expanduser() for part in os.environ.get("KUBECONFIG", "").split(os.pathsep) if part]
    if listed:
        return listed
    default = Path("~/.kube/config").expanduser()
    return [default] if default.exists() else []


def kubeconfig_needs_official_client() -> bool:
    """Whether any user or cluster of the kubeconfig files has what only the official client's loader reads
    right (PLUGIN_USER_KEYS, relative PATH_KEYS). Any entry, not just the current context's: merging the
    files to find it is the loader's job, and the official client is correct for all of them. A missing or
    unreadable file is left for the loader to report."""
    for path in kubeconfig_paths():
        try:
            config = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError):
            return False
        for section, key in (("users", "user"), ("clusters", "cluster")):
            for entry in config.get(section) or []:
                fields = (entry or {}).get(key) or {}
                if any(name in fields for name in PLUGIN_USER_KEYS):
                    return True
                if any(fields.get(name) and not Path(fields[name]).is_absolute() for name in PATH_KEYS):
                    return True
    return False


def official_client_login(*, settings: kopf.OperatorSettings, **kwargs: Any) -> kopf.ConnectionInfo:
    """The credentials through the official client's config loader (it runs exec plugins and refreshes
    auth-provider tokens at each call). Raises kopf.LoginError when it cannot authenticate."""
    if "kubernetes" in sys.modules and sys.modules["kubernetes"] is None:
        del sys.modules["kubernetes"]  # left out at the operator's start (commands/operator.py)
    info = kopf.login_via_client(logger=kwargs.get("logger") or logger, settings=settings)
    if info is None:
        raise kopf.LoginError(
            "the kubeconfig's user runs a credential plugin (exec, auth-provider or tokenFile), which needs "
            "the `kubernetes` package: pip install kubernetes"
        )
    return info
