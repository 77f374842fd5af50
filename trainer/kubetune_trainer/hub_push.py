"""Push the final model to a Hugging Face hub repository (output.hub, issue 13), with huggingface_hub's API.

The repository is created when missing (`create_repo(exist_ok=True)`, private by default), then the model
folder is uploaded in one commit (`upload_folder`). The token is KUBETUNE_HUB_TOKEN (on Kubernetes from
output.hub.tokenSecret), else HF_TOKEN; HF_ENDPOINT selects another hub (a mirror, an Enterprise hub).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from kubetune.contract import HF_TOKEN
from kubetune.spec.storage import HUB_PUSH_TOKEN_ENV, HubPushSpec

log = logging.getLogger(__name__)


class HubPushError(RuntimeError):
    """The push failed; the message says where the model still is and what to check."""


def push_model(hub: HubPushSpec, folder: Path, env: Mapping[str, str], commit_message: str) -> str:
    """Create `hub.repo_id` if needed and upload `folder` to it; returns the commit's URL.

    Raises HubPushError (naming output.hub and the saved model's folder) when there is no token or the hub
    refuses or cannot be reached.
    """
    from huggingface_hub import HfApi

    token = env.get(HUB_PUSH_TOKEN_ENV) or env.get(HF_TOKEN)
    if not token:
        raise HubPushError(
            f"output.hub.repoId is '{hub.repo_id}' but no token is set: give one with write access in "
            f"output.hub.tokenSecret ({HUB_PUSH_TOKEN_ENV}) or kubernetes.hfTokenSecret ({HF_TOKEN}); the model "
            f"is saved in {folder}"
        )
    # HF_ENDPOINT as the environment says now (huggingface_hub reads it once, at import).
    api = HfApi(token=token, endpoint=env.get("HF_ENDPOINT") or None)
    try:
        api.create_repo(repo_id=hub.repo_id, private=hub.private, repo_type="model", exist_ok=True)
        commit = api.upload_folder(
            repo_id=hub.repo_id, folder_path=str(folder), repo_type="model", commit_message=commit_message
        )
    except Exception as error:
        raise HubPushError(
            f"pushing the model to the hub repository {hub.repo_id} (output.hub) failed: "
            f"{type(error).__name__}: {error}. The model is saved in {folder}; check the token may write "
            "to the repository and the hub is reachable"
        ) from error
    url = str(getattr(commit, "commit_url", "") or f"{api.endpoint}/{hub.repo_id}")
    log.info("pushed the model to %s", url)
    return url
