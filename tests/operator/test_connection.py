"""The operator's connection to the API server (controller.connection, controller.kube.ApiConnection): the
credentials kopf's login functions read, sent over urllib3, against the real local API server, on each path a
kubeconfig can take (client certificate, ServiceAccount token, relative certificate files, an exec credential
plugin, a token file), and a refused token replaced by logging in again. Kubernetes quantities read without
the official client agree with its parser. The in-cluster ServiceAccount files cannot be mounted here (their
path is fixed); that path runs in tests/e2e/test_operator_image.py."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any
from unittest import mock

import kopf
import pytest
import yaml
from kubernetes.config import kube_config
from kubernetes.utils.quantity import parse_quantity as official_parse_quantity
from kubetune.controller import connection
from kubetune.controller.kube import ApiConnection, Kube
from kubetune.controller.quantity import parse_quantity

SELF_REVIEW = "/apis/authentication.k8s.io/v1/selfsubjectreviews"


def login_with(kubeconfig: Path) -> Callable[[], kopf.ConnectionInfo]:
    """`connection.login` reading `kubeconfig` (as $KUBECONFIG) at every call."""

    def login() -> kopf.ConnectionInfo:
        # (The official client reads $KUBECONFIG once, when imported: the test session imported it long ago.)
        with (
            mock.patch.dict(os.environ, {"KUBECONFIG": str(kubeconfig)}),
            mock.patch.object(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig)),
        ):
            return connection.login()

    return login


def kube_for(kubeconfig: Path) -> Kube:
    """The operator's API access with `kubeconfig`'s credentials."""
    return Kube(ApiConnection(login_with(kubeconfig)))


def whoami(kube: Kube) -> str:
    """The user name the API server authenticated the request as."""
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    answer = kube.request("POST", SELF_REVIEW, review)
    name: str = answer["status"]["userInfo"]["username"]
    return name


def _kubeconfig(user: dict[str, Any], cluster: dict[str, Any]) -> dict[str, Any]:
    return {
        "current-context": "dev",
        "contexts": [{"name": "dev", "context": {"cluster": "c", "user": "u"}}],
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": user}],
    }


def _write(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def _admin(kube_cluster: Any) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(Path(kube_cluster.kubeconfig).read_text())
    return config


def _service_account_token(kube_cluster: Any, namespace: str, kubectl: Any) -> tuple[str, dict[str, Any]]:
    """A TokenRequest token of ServiceAccount `namespace/reader` and the cluster entry to reach the server."""
    kubectl("create", "serviceaccount", "reader", namespace=namespace)
    config = yaml.safe_load(kube_cluster.kubeconfig_for_service_account(namespace, "reader").read_text())
    return config["users"][0]["user"]["token"], config["clusters"][0]["cluster"]


@pytest.mark.cluster
def test_a_client_certificate_inline(kube_cluster: Any) -> None:
    with mock.patch.dict(os.environ, {"KUBECONFIG": str(kube_cluster.kubeconfig)}):
        assert not connection.kubeconfig_needs_official_client()  # kopf's reader
    kube = kube_for(Path(kube_cluster.kubeconfig))
    assert whoami(kube)
    assert kube.get("FineTuneJob", "default", "no-such-job") is None  # a 404 read as absent


@pytest.mark.cluster
def test_a_service_account_token_and_a_refused_one_replaced(
    kube_cluster: Any, kube_namespace: str, kubectl: Any, tmp_path: Path
) -> None:
    token, cluster = _service_account_token(kube_cluster, kube_namespace, kubectl)
    kubeconfig = _write(tmp_path / "config", _kubeconfig({"token": "not-a-valid-token"}, cluster))
    kube = kube_for(kubeconfig)
    # The token is rotated (as the kubelet rotates a pod's): the API server refuses the old one with 401,
    # the connection logs in again and sends the request once more.
    _write(kubeconfig, _kubeconfig({"token": token}, cluster))
    assert whoami(kube) == f"system:serviceaccount:{kube_namespace}:reader"


@pytest.mark.cluster
def test_relative_certificate_files_go_through_the_official_client(kube_cluster: Any, tmp_path: Path) -> None:
    admin = _admin(kube_cluster)
    user, cluster = admin["users"][0]["user"], admin["clusters"][0]["cluster"]
    for name, data in (
        ("ca.crt", cluster["certificate-authority-data"]),
        ("client.crt", user["client-certificate-data"]),
        ("client.key", user["client-key-data"]),
    ):
        (tmp_path / name).write_bytes(base64.b64decode(data))
    kubeconfig = _write(
        tmp_path / "config",
        _kubeconfig(
            {"client-certificate": "client.crt", "client-key": "client.key"},
            {"server": cluster["server"], "certificate-authority": "ca.crt"},
        ),
    )
    with mock.patch.dict(os.environ, {"KUBECONFIG": str(kubeconfig)}):
        assert connection.kubeconfig_needs_official_client()
    assert whoami(kube_for(kubeconfig)) == whoami(kube_for(Path(kube_cluster.kubeconfig)))


@pytest.mark.cluster
def test_an_exec_plugin_runs_again_when_its_token_is_refused(
    kube_cluster: Any, kube_namespace: str, kubectl: Any, tmp_path: Path
) -> None:
    token, cluster = _service_account_token(kube_cluster, kube_namespace, kubectl)
    token_file = tmp_path / "token"
    token_file.write_text("not-a-valid-token")
    plugin = tmp_path / "plugin.sh"
    plugin.write_text(
        "#!/bin/sh\n"
        'printf \'{"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential", '
        f'"status": {{"token": "%s"}}}}\' "$(cat {token_file})"\n'
    )
    plugin.chmod(0o755)
    exec_user = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": str(plugin),
            "interactiveMode": "Never",
        }
    }
    kubeconfig = _write(tmp_path / "config", _kubeconfig(exec_user, cluster))
    kube = kube_for(kubeconfig)
    token_file.write_text(token)
    assert whoami(kube) == f"system:serviceaccount:{kube_namespace}:reader"


@pytest.mark.cluster
def test_a_token_file(kube_cluster: Any, kube_namespace: str, kubectl: Any, tmp_path: Path) -> None:
    token, cluster = _service_account_token(kube_cluster, kube_namespace, kubectl)
    (tmp_path / "token").write_text(token)
    kubeconfig = _write(tmp_path / "config", _kubeconfig({"tokenFile": str(tmp_path / "token")}, cluster))
    assert whoami(kube_for(kubeconfig)) == f"system:serviceaccount:{kube_namespace}:reader"


def test_what_only_the_official_client_reads(tmp_path: Path) -> None:
    server = {"server": "https://127.0.0.1:6443", "certificate-authority": "/etc/ca.crt"}
    cases = {
        "token": ({"token": "abc"}, server, False),
        "inline data": ({"client-certificate-data": "Zm9v", "client-key-data": "YmFy"}, server, False),
        "exec": ({"exec": {"command": "aws"}}, server, True),
        "auth-provider": ({"auth-provider": {"name": "oidc"}}, server, True),
        "tokenFile": ({"tokenFile": "/var/token"}, server, True),
        "relative CA": ({"token": "abc"}, {**server, "certificate-authority": "ca.crt"}, True),
        "relative key": ({"client-certificate": "/c.crt", "client-key": "c.key"}, server, True),
    }
    for case, (user, cluster, expected) in cases.items():
        kubeconfig = _write(tmp_path / "config", _kubeconfig(user, cluster))
        with mock.patch.dict(os.environ, {"KUBECONFIG": str(kubeconfig)}):
            assert connection.kubeconfig_needs_official_client() is expected, case


def test_a_proxy_and_insecure_flag_are_kept(tmp_path: Path) -> None:
    cluster = {"server": "https://h:1", "insecure-skip-tls-verify": True, "proxy-url": "http://proxy:3128"}
    kubeconfig = _write(tmp_path / "config", _kubeconfig({"token": "abc"}, cluster))
    info = login_with(kubeconfig)()
    assert (info.server, info.token, info.insecure, info.proxy_url) == (
        "https://h:1",
        "abc",
        True,
        "http://proxy:3128",
    )
    assert ApiConnection(login_with(kubeconfig))._pool.__class__.__name__ == "ProxyManager"


def test_a_missing_entry_or_no_kubeconfig_is_named(tmp_path: Path) -> None:
    config = _kubeconfig({"token": "abc"}, {"server": "https://h:1"})
    config["contexts"][0]["context"]["user"] = "nobody"
    with pytest.raises(kopf.LoginError, match="'nobody'"):
        login_with(_write(tmp_path / "config", config))()
    no_server = _kubeconfig({"token": "abc"}, {"insecure-skip-tls-verify": True})
    with pytest.raises(kopf.LoginError, match="without a server"):
        login_with(_write(tmp_path / "config", no_server))()
    no_kubeconfig = {"KUBECONFIG": "", "HOME": str(tmp_path / "home")}
    with mock.patch.dict(os.environ, no_kubeconfig), pytest.raises(kopf.LoginError, match="set KUBECONFIG"):
        connection.login()


def test_in_a_pod_the_service_address_comes_from_the_environment() -> None:
    info = kopf.ConnectionInfo(server="https://kubernetes.default.svc", token="t")
    with mock.patch.dict(
        os.environ, {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    ):
        assert connection.in_cluster_server(info).server == "https://10.96.0.1:443"
    with mock.patch.dict(
        os.environ, {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}
    ):
        assert connection.in_cluster_server(info).server == "https://[fd00::1]:443"


@pytest.mark.parametrize(
    "text",
    ["500m", "2Gi", "1e3", "1.5", "128Mi", "1k", "3M", "7n", "0.5Ti", "100u", "12E", "2Ei", "8", "80Gi"],
)
def test_quantities_read_as_the_official_client_reads_them(text: str) -> None:
    assert parse_quantity(text) == official_parse_quantity(text)


def test_quantities_of_other_types() -> None:
    assert parse_quantity(3) == Decimal(3)


@pytest.mark.parametrize("text", ["1ki", "abc", "1Xi", ""])
def test_what_is_not_a_quantity_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"quantity|suffix"):
        parse_quantity(text)


def test_the_operator_process_leaves_the_official_client_out(tmp_path: Path) -> None:
    """What the memory cut rests on: `kubetune operator` imports kopf and its own modules, and reads a plain
    kubeconfig, without the `kubernetes` package (its import costs about 30 MB)."""
    kubeconfig = _write(tmp_path / "config", _kubeconfig({"token": "abc"}, {"server": "https://127.0.0.1:1"}))
    script = (
        "import sys\n"
        "from kubetune.commands.operator import _leave_out_official_client\n"
        "_leave_out_official_client()\n"
        "import kopf\n"
        "import kubetune.controller.reconciler, kubetune.controller.wiring\n"
        "from kubetune.controller.kube import load_client_config\n"
        "load_client_config()\n"
        "print(sys.modules.get('kubernetes'))\n"
    )
    env = {"KUBECONFIG": str(kubeconfig), "PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "None"
