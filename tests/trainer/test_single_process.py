"""Given a FineTuneJob and `kubetune train --single-process`, the tiny model learns and every output is written.

The runs happen inside the test process (`train_in_process`: the same code path as the CLI's --single-process,
minus interpreter start-up); the CLI itself runs as a child process in test_bad_input.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kubetune.events import EventKind, JobSummary, ProgressEvent
from kubetune_trainer.synthetic import build_tiny_model, read_texts, write_job_file

from tests.trainer.helpers import Assets, explain, make_job, read_summary, train_in_process

pytestmark = pytest.mark.timeout(300)


def test_tiny_bert_learns_the_sentiment_task_and_writes_its_outputs(
    tmp_path: Path, assets: Assets, in_process_env: dict[str, str]
) -> None:
    events_file = tmp_path / "events.jsonl"
    job = make_job(
        tmp_path,
        assets,
        training={"epochs": 2, "metrics": ["accuracy", "f1", "precision", "recall"], "warmupRatio": 0.1},
        dataset={"groupByLength": True},
    )
    result = train_in_process(job, {**in_process_env, "KUBETUNE_EVENTS_FILE": str(events_file)})
    assert result.returncode == 0, explain(result)

    summary = read_summary(tmp_path / "job-out")
    print("single-process accuracy:", summary["metrics"])
    assert summary["outcome"] == "finished"
    assert summary["metrics"]["eval_accuracy"] >= 0.8  # chance is 0.5
    assert {"eval_loss", "eval_f1", "eval_precision", "eval_recall"} <= set(summary["metrics"])
    assert summary["step"] == summary["total_steps"] == 50  # 400 examples / 16 per batch, 2 epochs

    kinds = [event.event for event in result.events]
    assert kinds[0] == EventKind.STARTED and kinds[-1] == EventKind.FINISHED
    assert kinds.count(EventKind.EVAL) == 2 and kinds.count(EventKind.CHECKPOINT) == 2  # one per epoch
    steps = [event for event in result.events if event.event == EventKind.STEP]
    assert [event.step for event in steps] == list(range(5, 51, 5))
    assert (
        steps[0].learning_rate is not None
        and steps[0].samples_per_second
        and steps[0].eta_seconds is not None
    )
    first_loss, last_loss = steps[0].loss, steps[-1].loss
    assert first_loss is not None and last_loss is not None and last_loss < first_loss

    # The events file holds the same events as stdout; the termination log the compact summary.
    file_events = [ProgressEvent.from_json(line) for line in events_file.read_text().splitlines()]
    assert [e.event for e in file_events] == kinds
    termination = JobSummary.from_termination_message((tmp_path / "termination-log").read_text())
    assert termination is not None and termination.outcome == EventKind.FINISHED

    model_dir = tmp_path / "job-out" / "model"
    card = (model_dir / "README.md").read_text()
    assert "eval_accuracy" in card and "learning rate" in card and str(assets.train) in card
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    AutoTokenizer.from_pretrained(model_dir)
    assert AutoModelForSequenceClassification.from_pretrained(model_dir).config.num_labels == 2


def test_string_labels_are_mapped_to_sorted_ids_and_stored_in_the_config(
    tmp_path: Path, assets: Assets, in_process_env: dict[str, str]
) -> None:
    job = write_job_file(
        tmp_path / "job.yaml",
        model=str(assets.model),
        train=str(assets.string_train),
        eval=str(assets.string_eval),
        output=str(tmp_path / "out"),
        overrides={"training": {"epochs": 2, "gradientCheckpointing": True, "gradientAccumulationSteps": 2}},
    )
    result = train_in_process(job, in_process_env)
    assert result.returncode == 0, explain(result)
    config = json.loads((tmp_path / "out" / "model" / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert config["label2id"] == {"negative": 0, "positive": 1}
    assert read_summary(tmp_path / "out")["metrics"]["eval_accuracy"] >= 0.7


def test_tiny_gpt2_causal_lm_reports_perplexity_that_falls(
    tmp_path: Path, assets: Assets, in_process_env: dict[str, str]
) -> None:
    model = build_tiny_model(tmp_path / "gpt", read_texts(assets.train), task="causal-lm")
    job = write_job_file(
        tmp_path / "job.yaml",
        model=str(model),
        train=str(assets.train),
        eval=str(assets.eval),
        output=str(tmp_path / "out"),
        overrides={
            "model": {"task": "causal-lm"},
            "dataset": {"labelField": None},
            "training": {"metrics": ["perplexity"], "evalStrategy": "steps", "evalSteps": 10, "maxSteps": 30},
        },
    )
    result = train_in_process(job, in_process_env)
    assert result.returncode == 0, explain(result)
    perplexities = [e.metrics["eval_perplexity"] for e in result.events if e.event == EventKind.EVAL]
    print("causal-lm perplexity by eval:", perplexities)
    assert len(perplexities) == 3
    assert perplexities[-1] < perplexities[0] / 2
    # EOS closes every text and is a target (pad = eos is masked only at padding): the model learned to stop.
    stop = probability_of_eos_after_each_text(tmp_path / "out" / "model", read_texts(assets.eval)[:50])
    untrained = probability_of_eos_after_each_text(model, read_texts(assets.eval)[:50])
    print(f"P(eos | whole text): untrained {untrained:.4f}, trained {stop:.4f}")
    assert (
        stop > 0.05 and stop > 20 * untrained
    )  # EOS never a target: it would fall below the untrained value


def probability_of_eos_after_each_text(folder: Path, texts: list[str]) -> float:
    """Mean probability the causal LM in `folder` gives EOS right after each complete text."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    total = 0.0
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt")["input_ids"]
            logits = model(input_ids=ids).logits[0, -1]
            total += float(torch.softmax(logits.float(), dim=-1)[tokenizer.eos_token_id])
    return total / len(texts)
