"""Where the model goes besides output.path (issue 13): S3-compatible object storage and the Hugging Face hub.

`output.objectStorage` sends the final model, the reports, the TensorBoard files and (by default) the
checkpoints to `s3://bucket/prefix`; credentials come from a Secret that the operator maps into the worker
pods' environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), never into the spec or the status.
`output.hub` pushes the final model to a hub repository at the end. Torch-free, like the rest of the spec.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Final

from pydantic import Field, field_validator

from kubetune.spec.kube_names import ObjectName, SecretKey
from kubetune.spec.models import SecretKeyRef, SpecModel

if TYPE_CHECKING:
    from kubetune.spec.models import FineTuneJobSpec

# The environment variables the trainer reads the object store's credentials from (the AWS SDKs' names, so
# that a pod's ambient credentials, e.g. from a mutating webhook, work too).
ACCESS_KEY_ID_ENV: Final = "AWS_ACCESS_KEY_ID"
SECRET_ACCESS_KEY_ENV: Final = "AWS_SECRET_ACCESS_KEY"
# The hub token for the push (kept apart from HF_TOKEN, which downloads the base model).
HUB_PUSH_TOKEN_ENV: Final = "KUBETUNE_HUB_TOKEN"

# The patterns are in the CRD too (the API server refuses what `kubetune validate` refuses), so they keep to
# what Go's RE2 and Rust's regex read alike: no \s (Unicode in one, ASCII in the other).
# S3 bucket naming rules: 3-63 characters, lowercase letters, digits, dots and hyphens.
_BUCKET = r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"
S3_URI_PATTERN: Final = rf"^s3://{_BUCKET}(/.*)?$"
ENDPOINT_PATTERN: Final = r"^https?://[^/]+(/.*)?$"
REPO_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$"


class ObjectStoreCredentials(SpecModel):
    name: ObjectName = Field(description="Secret in the job's namespace (a DNS subdomain).")
    access_key_id_key: SecretKey = Field(
        default=ACCESS_KEY_ID_ENV, description="Key in the Secret holding the access key id."
    )
    secret_access_key_key: SecretKey = Field(
        default=SECRET_ACCESS_KEY_ENV, description="Key in the Secret holding the secret access key."
    )


class ObjectStorageSpec(SpecModel):
    uri: str = Field(
        min_length=6,
        pattern=S3_URI_PATTERN,
        max_length=1024,
        description="s3://bucket/prefix: the model goes to <uri>/model, the reports and TensorBoard files "
        "beside it, the checkpoints to <uri>/checkpoints.",
    )
    endpoint: str | None = Field(
        default=None,
        max_length=1024,
        pattern=ENDPOINT_PATTERN,
        description="URL of an S3-compatible server (MinIO, SeaweedFS, Ceph RGW, a cloud's S3 endpoint); "
        "unset: AWS S3.",
    )
    region: str = Field(default="us-east-1", min_length=1, description="Region of the bucket.")
    credentials_secret: ObjectStoreCredentials | None = Field(
        default=None,
        description="Secret with the access key id and secret access key, passed to the workers as "
        "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY; unset: the pods' own credentials (e.g. workload identity).",
    )
    checkpoints: bool = Field(
        default=True,
        description="Keep the checkpoints in the bucket too (each complete only once its COMPLETE marker is "
        "written, last), so that a gang resumes without a ReadWriteMany volume; false keeps them under "
        "output.path only.",
    )

    @field_validator("uri", mode="before")
    @classmethod
    def _s3_uri(cls, value: object) -> object:
        """Names the fix where the pattern alone would only say "should match"."""
        if isinstance(value, str) and not re.match(S3_URI_PATTERN, value):
            scheme = value.split("://", 1)[0] if "://" in value else "no scheme"
            raise ValueError(
                f"'{value}' is not an s3:// URI ({scheme}): use s3://<bucket>/<prefix>, with a bucket name of "
                "3-63 lowercase letters, digits, dots and hyphens (other stores: their S3-compatible endpoint "
                "in output.objectStorage.endpoint)"
            )
        return value

    @field_validator("endpoint", mode="before")
    @classmethod
    def _endpoint_url(cls, value: object) -> object:
        if isinstance(value, str) and not re.match(ENDPOINT_PATTERN, value):
            raise ValueError(
                f"'{value}' is not an http:// or https:// URL: give the S3 endpoint as a URL, e.g. "
                "http://minio.storage:9000"
            )
        return value

    @property
    def endpoint_url(self) -> str | None:
        return self.endpoint.rstrip("/") if self.endpoint else None

    @property
    def bucket(self) -> str:
        return self.uri.removeprefix("s3://").split("/", 1)[0]

    @property
    def prefix(self) -> str:
        """The key prefix inside the bucket, without slashes at either end ('' for the bucket's root)."""
        parts = self.uri.removeprefix("s3://").split("/", 1)
        return parts[1].strip("/") if len(parts) > 1 else ""

    def location(self, *parts: str) -> str:
        """The s3:// URI of `parts` under the prefix, e.g. location("model") -> s3://bucket/prefix/model."""
        return "s3://" + "/".join(p for p in (self.bucket, self.prefix, *parts) if p)


class HubPushSpec(SpecModel):
    repo_id: str = Field(
        max_length=200,
        pattern=REPO_ID_PATTERN,
        description="Hub repository the final model is pushed to, e.g. my-org/my-model (created if missing).",
    )
    private: bool = Field(default=True, description="Create the repository as private.")
    token_secret: SecretKeyRef | None = Field(
        default=None,
        description="Secret key with a hub token that may write to the repository (passed to the workers as "
        "KUBETUNE_HUB_TOKEN); unset: kubernetes.hfTokenSecret's token.",
    )

    @field_validator("repo_id", mode="before")
    @classmethod
    def _repo_id(cls, value: object) -> object:
        if isinstance(value, str) and not re.match(REPO_ID_PATTERN, value):
            raise ValueError(
                f"'{value}' is not a hub repository id: use <owner>/<name>, e.g. my-org/bert-mrpc (letters, "
                "digits, '.', '_' and '-')"
            )
        return value


def hub_token_problem(spec: FineTuneJobSpec) -> str | None:
    """Why a hub push could not authenticate on Kubernetes (no token Secret named), or None.

    A cluster rule only: `kubetune run` reads KUBETUNE_HUB_TOKEN or HF_TOKEN from the user's environment.
    """
    hub = spec.output.hub
    if hub is None or hub.token_secret is not None or spec.kubernetes.hf_token_secret is not None:
        return None
    return (
        f"output.hub.repoId is '{hub.repo_id}' but no Secret holds a token for the push: set "
        "output.hub.tokenSecret: {name: <secret>, key: <key>} (a token with write access), or "
        "kubernetes.hfTokenSecret"
    )
