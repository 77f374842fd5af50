"""The Secrets behind object storage, the hub push and W&B, as environment of the worker pods (issue 13).

Each is a `valueFrom.secretKeyRef`: the values never appear in the job, the pod spec, the ConfigMap or the
status, only in the containers' environment, where the trainer (and the SDKs it uses) read them.
"""

from __future__ import annotations

from typing import Any

from kubetune.spec.models import FineTuneJobSpec
from kubetune.spec.storage import ACCESS_KEY_ID_ENV, HUB_PUSH_TOKEN_ENV, SECRET_ACCESS_KEY_ENV
from kubetune.spec.tracking import WANDB_API_KEY_ENV


def _from_secret(env_name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": env_name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def delivery_env(spec: FineTuneJobSpec) -> list[dict[str, Any]]:
    """The env entries (core/v1 EnvVar) that hand the object store's, the hub's and W&B's credentials to a
    worker; empty when the spec names no such Secret."""
    env: list[dict[str, Any]] = []
    storage = spec.output.object_storage
    if storage is not None and storage.credentials_secret is not None:
        secret = storage.credentials_secret
        env.append(_from_secret(ACCESS_KEY_ID_ENV, secret.name, secret.access_key_id_key))
        env.append(_from_secret(SECRET_ACCESS_KEY_ENV, secret.name, secret.secret_access_key_key))
    hub = spec.output.hub
    if hub is not None and hub.token_secret is not None:
        env.append(_from_secret(HUB_PUSH_TOKEN_ENV, hub.token_secret.name, hub.token_secret.key))
    wandb = spec.tracking.wandb
    if wandb is not None:
        env.append(_from_secret(WANDB_API_KEY_ENV, wandb.api_key_secret.name, wandb.api_key_secret.key))
    return env
