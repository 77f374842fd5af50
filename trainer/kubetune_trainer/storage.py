"""The object store of `output.objectStorage` (issue 13): an S3-compatible bucket, through fsspec.

The filesystem is fsspec's `ArrowFSWrapper` around pyarrow's S3 client. s3fs (fsspec's usual S3 backend)
cannot be installed beside this project's pins: every botocore release requires python-dateutil < 3, and
the environment holds python-dateutil 4. pyarrow is already here (the datasets library needs it), and its
S3 client speaks to AWS and to S3-compatible servers alike.

Layout under `s3://bucket/prefix`: `model/` (the final model), `metrics.json`, `tensorboard/` (sent by a
failed or preempted run too), and `checkpoints/step-<N>/` (complete only once its `COMPLETE` marker exists: the
marker is written last).
Credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY from the environment (on Kubernetes the operator maps
them from output.objectStorage.credentialsSecret), else the client's default chain.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kubetune.spec.storage import ACCESS_KEY_ID_ENV, SECRET_ACCESS_KEY_ENV, ObjectStorageSpec

log = logging.getLogger(__name__)

# Since late 2024 the AWS SDKs add CRC checksums to every upload by default (aws-chunked bodies with trailers),
# which many S3-compatible servers refuse (HTTP 411, MissingContentLength). With a custom endpoint the trainer
# asks for checksums only where the API requires them, as the SDKs' own guidance for such servers says; a
# value the user set in the environment is kept.
_CHECKSUM_SETTINGS = {
    "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
    "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
}


# How the AWS SDK under pyarrow names S3's refusals of a request's credentials (SignatureDoesNotMatch,
# InvalidAccessKeyId, AccessDenied) in its messages.
_REFUSED_CREDENTIALS = ("SIGNATURE_DOES_NOT_MATCH", "INVALID_ACCESS_KEY_ID", "ACCESS_DENIED")


class ObjectStoreError(RuntimeError):
    """The bucket could not be reached or written; the message names output.objectStorage and the fix."""


def _arrow_filesystem(spec: ObjectStorageSpec, env: Mapping[str, str]) -> Any:
    import pyarrow.fs as pafs

    options: dict[str, Any] = {"region": spec.region}
    key_id, secret = env.get(ACCESS_KEY_ID_ENV), env.get(SECRET_ACCESS_KEY_ENV)
    if key_id and secret:
        options.update(access_key=key_id, secret_key=secret)
    if spec.endpoint_url:
        for name, value in _CHECKSUM_SETTINGS.items():
            os.environ.setdefault(name, value)
        scheme, _, host = spec.endpoint_url.partition("://")
        options.update(endpoint_override=host, scheme=scheme)
    return pafs.S3FileSystem(**options)


class ObjectStore:
    """Files under `spec.uri`; paths are relative to the prefix ("model", "checkpoints/step-4/...")."""

    def __init__(self, spec: ObjectStorageSpec, env: Mapping[str, str] | None = None) -> None:
        from fsspec.implementations.arrow import ArrowFSWrapper

        self.spec = spec
        self.fs = ArrowFSWrapper(_arrow_filesystem(spec, os.environ if env is None else env))

    def key(self, relative: str = "") -> str:
        """bucket/prefix/relative, as the filesystem names it."""
        return "/".join(p.strip("/") for p in (self.spec.bucket, self.spec.prefix, relative) if p.strip("/"))

    def uri(self, relative: str = "") -> str:
        """s3://bucket/prefix/relative."""
        return f"s3://{self.key(relative)}"

    def check_access(self) -> None:
        """Write and delete a probe object. Raises ObjectStoreError naming the bucket, the endpoint and what to
        check: a job finds a wrong endpoint or key before training, not at its first checkpoint."""
        probe = ".kubetune-probe"
        try:
            self.write_text(probe, "ok\n")
            self.fs.rm_file(self.key(probe))
        except Exception as error:
            where = f"{self.uri()} (output.objectStorage, endpoint {self.spec.endpoint_url or 'AWS S3'})"
            cause = f"{type(error).__name__}: {error}"
            if any(code in str(error) for code in _REFUSED_CREDENTIALS):
                raise ObjectStoreError(
                    f"the server refused the credentials for {where}: {cause}. Check {self._credentials_source()} "
                    "(a wrong secret, a key id the server does not know, or keys without write access to the "
                    "bucket)"
                ) from error
            raise ObjectStoreError(
                f"cannot write to {where}: {cause}. Check the bucket exists, the endpoint is reachable and "
                f"{ACCESS_KEY_ID_ENV}/{SECRET_ACCESS_KEY_ENV} (from output.objectStorage.credentialsSecret) may "
                "write there"
            ) from error

    def _credentials_source(self) -> str:
        """Where the signing keys come from, for messages: the Secret's own key names (credentialsSecret may rename
        them), else the pod's environment and the client's default chain."""
        secret = self.spec.credentials_secret
        if secret is None:
            return (
                f"the pod's own credentials ({ACCESS_KEY_ID_ENV}/{SECRET_ACCESS_KEY_ENV} or the client's default "
                "chain: output.objectStorage.credentialsSecret is unset)"
            )
        return (
            f"the keys {secret.access_key_id_key} and {secret.secret_access_key_key} of Secret {secret.name} "
            "(output.objectStorage.credentialsSecret)"
        )

    def write_text(self, relative: str, text: str) -> None:
        with self.fs.open(self.key(relative), "wb") as handle:
            handle.write(text.encode("utf-8"))

    def read_text(self, relative: str) -> str:
        with self.fs.open(self.key(relative), "rb") as handle:
            data: bytes = handle.read()
        return data.decode("utf-8")

    def exists(self, relative: str) -> bool:
        return bool(self.fs.exists(self.key(relative)))

    def children(self, relative: str) -> list[str]:
        """Names of the entries right under `relative` (empty when there is none)."""
        folder = self.key(relative)
        if not self.fs.exists(folder):
            return []
        # A folder can be listed twice: as a common prefix and as its directory marker object.
        return sorted({str(path).rstrip("/").rsplit("/", 1)[-1] for path in self.fs.ls(folder, detail=False)})

    def upload_folder(self, local: Path, relative: str, skip: frozenset[str] = frozenset()) -> int:
        """Copy every file under `local` to `relative` (names in `skip` left out); returns the bytes sent."""
        sent = 0
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            if path.name in skip:
                continue
            inside = path.relative_to(local).as_posix()
            self.fs.put_file(str(path), self.key(f"{relative}/{inside}"))
            sent += path.stat().st_size
        return sent

    def download_folder(self, relative: str, local: Path) -> int:
        """Copy every object under `relative` into `local`; returns the bytes received."""
        root = self.key(relative)
        received = 0
        for remote in sorted(self.fs.find(root)):
            inside = str(remote)[len(root) :].lstrip("/")
            if not inside:
                continue
            target = local / inside
            target.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(str(remote), str(target))
            received += target.stat().st_size
        return received

    def remove(self, relative: str) -> None:
        """Delete `relative` and everything under it (nothing when it does not exist)."""
        key = self.key(relative)
        if self.fs.exists(key):
            self.fs.rm(key, recursive=True)


def open_store(spec: ObjectStorageSpec | None, env: Mapping[str, str] | None = None) -> ObjectStore | None:
    """The job's ObjectStore, or None without output.objectStorage."""
    return ObjectStore(spec, env) if spec is not None else None
