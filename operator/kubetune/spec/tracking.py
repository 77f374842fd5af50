"""Experiment tracking (issue 13): TensorBoard always, MLflow and Weights & Biases when configured.

The trainer logs through accelerate's tracker API. TensorBoard event files are always written next to the
outputs (`<output.path>/tensorboard`, copied to the object store when there is one). A tracker that cannot be
reached never fails the training: the trainer reports it (reason TrackerUnavailable) and goes on.
Torch-free, like the rest of the spec.
"""

from __future__ import annotations

import re
from typing import Final

from pydantic import Field, field_validator

from kubetune.spec.models import SecretKeyRef, SpecModel

WANDB_API_KEY_ENV: Final = "WANDB_API_KEY"
TRACKING_URI_PATTERN: Final = r"^(https?://[^/]+(/.*)?|databricks(://.*)?)$"
TRACKER_UNAVAILABLE: Final = "TrackerUnavailable"  # the reason of the warning a failed tracker produces


class MlflowSpec(SpecModel):
    tracking_uri: str = Field(
        max_length=1024,
        pattern=TRACKING_URI_PATTERN,
        description="MLflow tracking server, e.g. http://mlflow.mlops:5000 (the run's params and metrics go "
        "there; its id and URL go to status.tracking).",
    )
    experiment_name: str = Field(
        default="kubetune", min_length=1, max_length=500, description="MLflow experiment of the run."
    )

    @field_validator("tracking_uri", mode="before")
    @classmethod
    def _tracking_uri(cls, value: object) -> object:
        if isinstance(value, str) and not re.match(TRACKING_URI_PATTERN, value):
            raise ValueError(
                f"'{value}' is not an MLflow tracking server URI: use its http:// or https:// URL, e.g. "
                "http://mlflow.mlops:5000 (a file: store would stay inside the pod)"
            )
        return value


class WandbSpec(SpecModel):
    project: str = Field(min_length=1, max_length=128, description="W&B project of the run.")
    entity: str | None = Field(
        default=None, description="W&B entity (team or user); unset: the key's default."
    )
    api_key_secret: SecretKeyRef = Field(
        description="Secret key with the W&B API key, passed to the workers as WANDB_API_KEY."
    )


class TrackingSpec(SpecModel):
    mlflow: MlflowSpec | None = Field(default=None, description="Log to an MLflow tracking server.")
    wandb: WandbSpec | None = Field(
        default=None,
        description="Log to Weights & Biases (needs the trainer image's `wandb` extra; refused without it). On a "
        "cluster without network to W&B, set WANDB_MODE: offline in kubernetes.env: the run is written next to "
        "the outputs (and copied to the object store) and status.tracking says where and how to `wandb sync` it.",
    )
