"""Fixtures for the runner tests: a tiny BERT and synthetic sentiment data, built once per session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class TinyAssets:
    model: Path
    train: Path
    eval: Path


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory: pytest.TempPathFactory) -> TinyAssets:
    """A tiny randomly initialised BERT with its own tokenizer, and 800/200 sentiment examples."""
    from kubetune_trainer.synthetic import build_tiny_model, read_texts, write_sentiment_dataset

    folder = tmp_path_factory.mktemp("tiny")
    train, eval_ = write_sentiment_dataset(folder / "data", n_train=800, n_eval=200, seed=0)
    model = build_tiny_model(folder / "model", corpus=read_texts(train), num_labels=2)
    return TinyAssets(model=model, train=train, eval=eval_)
