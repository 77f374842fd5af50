"""The certificates and keys of a local test cluster, made with the `openssl` command line tool.

One CA signs everything: the API server's serving certificate (valid for 127.0.0.1 and the in-cluster
names), one client certificate per component (so that RBAC sees the same users as on a real cluster:
`system:kube-controller-manager`, `system:kube-scheduler`, an admin in `system:masters`), and the
key pair that signs and verifies service-account tokens. EC P-256 keys keep generation fast; RSA is
used only where Kubernetes expects it by default (the service-account key).
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# The in-cluster names of the API server; the first IP of the service range is the `kubernetes` Service.
APISERVER_DNS_NAMES = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
APISERVER_IPS = ("127.0.0.1", "10.96.0.1")
VALID_DAYS = 30


@dataclass(frozen=True)
class KeyPair:
    """A PEM certificate and its PEM private key on disk."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class ClusterPKI:
    """All the key material a local cluster needs, as files under one directory."""

    ca: KeyPair
    apiserver: KeyPair
    admin: KeyPair
    controller_manager: KeyPair
    scheduler: KeyPair
    kwok: KeyPair
    service_account_key: Path
    service_account_public_key: Path


def _openssl(*args: str) -> None:
    """Runs openssl; raises RuntimeError with its stderr when it fails."""
    result = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {result.stderr.strip()}")


def _ec_key(path: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path))


def _signed(
    directory: Path,
    name: str,
    ca: KeyPair,
    subject: str,
    extensions: list[str],
) -> KeyPair:
    """Creates a key and a certificate for `subject` signed by `ca`; returns their paths."""
    pair = KeyPair(cert=directory / f"{name}.crt", key=directory / f"{name}.key")
    csr = directory / f"{name}.csr"
    extfile = directory / f"{name}.ext"
    _ec_key(pair.key)
    _openssl("req", "-new", "-key", str(pair.key), "-subj", subject, "-out", str(csr))
    extfile.write_text("\n".join(extensions) + "\n")
    _openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca.cert),
        "-CAkey",
        str(ca.key),
        "-CAcreateserial",
        "-days",
        str(VALID_DAYS),
        "-sha256",
        "-extfile",
        str(extfile),
        "-out",
        str(pair.cert),
    )
    csr.unlink()
    extfile.unlink()
    return pair


def _client(directory: Path, name: str, ca: KeyPair, user: str, group: str | None = None) -> KeyPair:
    subject = f"/CN={user}" + (f"/O={group}" if group else "")
    return _signed(
        directory,
        name,
        ca,
        subject,
        [
            "basicConstraints=critical,CA:FALSE",
            "keyUsage=critical,digitalSignature",
            "extendedKeyUsage=clientAuth",
        ],
    )


def create_client_pair(
    directory: Path, name: str, ca: KeyPair, user: str, group: str | None = None
) -> KeyPair:
    """Writes a client certificate for `user` (and `group`) signed by `ca` as `name`.crt/.key; returns them.

    Raises RuntimeError when openssl fails.
    """
    return _client(directory, name, ca, user, group)


def create_serving_pair(
    directory: Path, name: str, ca: KeyPair, common_name: str, dns_names: Sequence[str], ips: Sequence[str]
) -> KeyPair:
    """Writes a serving certificate for `dns_names` and `ips` signed by `ca`; returns its paths.

    Raises RuntimeError when openssl fails.
    """
    alt_names = ",".join([f"DNS:{n}" for n in dns_names] + [f"IP:{ip}" for ip in ips])
    return _signed(
        directory,
        name,
        ca,
        f"/CN={common_name}",
        [
            "basicConstraints=critical,CA:FALSE",
            "keyUsage=critical,digitalSignature,keyEncipherment",
            "extendedKeyUsage=serverAuth",
            f"subjectAltName={alt_names}",
        ],
    )


def create_cluster_pki(directory: Path, extra_apiserver_ips: Sequence[str] = ()) -> ClusterPKI:
    """Writes a fresh CA, serving and client certificates and the service-account key pair.

    `extra_apiserver_ips` are added to the API server's certificate (the hub address when it runs in a
    network namespace, see tests/kube/netns.py). Returns the paths; raises RuntimeError when openssl fails.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca = KeyPair(cert=directory / "ca.crt", key=directory / "ca.key")
    _ec_key(ca.key)
    _openssl(
        "req",
        "-x509",
        "-new",
        "-key",
        str(ca.key),
        "-subj",
        "/CN=kubetune-test-ca",
        "-days",
        str(VALID_DAYS),
        "-sha256",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        "-out",
        str(ca.cert),
    )
    alt_names = ",".join(
        [f"DNS:{name}" for name in APISERVER_DNS_NAMES]
        + [f"IP:{ip}" for ip in (*APISERVER_IPS, *extra_apiserver_ips)]
    )
    apiserver = _signed(
        directory,
        "apiserver",
        ca,
        "/CN=kube-apiserver",
        [
            "basicConstraints=critical,CA:FALSE",
            "keyUsage=critical,digitalSignature,keyEncipherment",
            "extendedKeyUsage=serverAuth",
            f"subjectAltName={alt_names}",
        ],
    )
    service_account_key = directory / "service-account.key"
    service_account_public_key = directory / "service-account.pub"
    _openssl(
        "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(service_account_key)
    )
    _openssl("pkey", "-in", str(service_account_key), "-pubout", "-out", str(service_account_public_key))
    return ClusterPKI(
        ca=ca,
        apiserver=apiserver,
        admin=_client(directory, "admin", ca, "kubetune-admin", "system:masters"),
        controller_manager=_client(directory, "controller-manager", ca, "system:kube-controller-manager"),
        scheduler=_client(directory, "scheduler", ca, "system:kube-scheduler"),
        # KWOK plays the kubelets of all fake nodes; the admin group keeps it independent of the Node
        # authorizer, which would tie each client to a single node name.
        kwok=_client(directory, "kwok", ca, "kwok-controller", "system:masters"),
        service_account_key=service_account_key,
        service_account_public_key=service_account_public_key,
    )
