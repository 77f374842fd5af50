"""The push of the final model to a Hugging Face hub repository (output.hub, issue 13).

The hub cannot be reached from here, so everything up to the network is tested: huggingface_hub's real
`create_repo` and `upload_folder` run against a small HTTP server on loopback (HF_ENDPOINT) that records the
requests, accepts the repository creation and refuses the upload. What is checked is that the calls are made
with the right repository, privacy, token and files, and that a refused push fails with a message saying where
the model still is. A real hub's answers beyond that are not exercised.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from kubetune.spec.storage import HubPushSpec
from kubetune_trainer.hub_push import HubPushError, push_model


class RecordingHub(BaseHTTPRequestHandler):
    """Answers repository creation like the hub; refuses everything else with 403 (a 5xx would be retried with backoff). Records every request."""

    requests: ClassVar[list[dict[str, Any]]] = []

    def _record(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        entry = {
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body,
        }
        type(self).requests.append(entry)
        return entry

    def _answer(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        entry = self._record()
        if entry["path"] == "/api/repos/create":
            name = json.loads(entry["body"])
            repo = f"{name.get('organization')}/{name['name']}" if name.get("organization") else name["name"]
            self._answer(200, {"url": f"http://{self.headers['Host']}/{repo}", "name": repo, "id": repo})
        else:
            self._answer(403, {"error": "the test hub takes no uploads"})

    do_GET = do_PUT = do_POST

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def hub() -> Iterator[str]:
    RecordingHub.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), RecordingHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_the_model_is_pushed_with_create_repo_and_upload_folder_to_the_configured_repository(
    tmp_path: Path, hub: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # the tests run offline otherwise
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"weights")
    spec = HubPushSpec.model_validate({"repoId": "my-org/bert-mrpc", "private": True})

    with pytest.raises(HubPushError) as error:
        push_model(spec, model, {"KUBETUNE_HUB_TOKEN": "hf_test_token", "HF_ENDPOINT": hub}, "kubetune: test")

    create = RecordingHub.requests[0]
    assert create["path"] == "/api/repos/create"
    body = json.loads(create["body"])
    assert (body.get("organization"), body["name"]) in {("my-org", "bert-mrpc"), (None, "my-org/bert-mrpc")}
    # huggingface_hub 2.x says visibility: private (1.x said private: true)
    assert body.get("visibility") == "private" or body.get("private") is True, body
    assert body.get("type", "model") == "model"
    assert create["headers"]["authorization"] == "Bearer hf_test_token"
    # Then upload_folder: its first request names the repository and the model's files.
    upload = RecordingHub.requests[1]
    assert "/api/models/my-org/bert-mrpc/" in upload["path"]
    assert b"model.safetensors" in upload["body"] and b"config.json" in upload["body"]
    assert f"The model is saved in {model}" in str(error.value)
    assert "my-org/bert-mrpc (output.hub)" in str(error.value)


def test_a_push_without_a_token_names_the_fields_that_give_one(tmp_path: Path) -> None:
    spec = HubPushSpec.model_validate({"repoId": "my-org/bert-mrpc"})
    with pytest.raises(HubPushError, match=r"output.hub.tokenSecret .*kubernetes.hfTokenSecret"):
        push_model(spec, tmp_path, {}, "kubetune: test")
