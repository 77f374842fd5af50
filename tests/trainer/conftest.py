"""Fixtures for trainer tests: synthetic data and a tiny model, built once per session.

Nothing is mocked: training runs in child processes (single process, or several nodes over gloo on 127.0.0.1)
with one thread each, offline (see helpers.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kubetune_trainer.synthetic import build_tiny_model, read_texts, write_sentiment_dataset

from tests.trainer.helpers import Assets, child_env


@pytest.fixture(scope="session")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Assets:
    """400/200 synthetic sentiment examples (int labels, and a string-label variant) and a tiny BERT."""
    root = tmp_path_factory.mktemp("trainer-assets")
    train, eval_ = write_sentiment_dataset(root / "sentiment", n_train=400, n_eval=200, seed=0)
    string_train, string_eval = write_sentiment_dataset(
        root / "sentiment-strings", n_train=400, n_eval=200, seed=1, string_labels=True
    )
    model = build_tiny_model(root / "tiny-bert", read_texts(train), num_labels=2)
    return Assets(train, eval_, model, string_train, string_eval)


@pytest.fixture
def in_process_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """This process set up like a trainer child (offline, one thread); yields the environment to pass on."""
    import torch

    env = child_env(tmp_path)
    for name in (
        "HF_HUB_OFFLINE",
        "TOKENIZERS_PARALLELISM",
        "HF_DATASETS_DISABLE_PROGRESS_BARS",
        "KUBETUNE_TERMINATION_LOG",
    ):
        monkeypatch.setenv(name, env[name])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield env
    torch.set_num_threads(threads)
