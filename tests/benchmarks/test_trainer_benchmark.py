"""The trainer benchmark runs end to end at a tiny size and prints and writes its figures.

A check that `benchmarks/trainer_vs_hf_trainer.py` works (both sides train in their own processes, the table
and the JSON file come out), not a timing assertion: throughput targets live in the benchmark's own output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "trainer_vs_hf_trainer.py"


def test_benchmark_prints_and_writes_figures_for_both_sides(tmp_path: Path) -> None:
    result_file = tmp_path / "result.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--model",
            "tiny",
            "--train-samples",
            "64",
            "--eval-samples",
            "32",
            "--batch-size",
            "16",
            "--rounds",
            "1",
            "--sides",
            "kubetune,trainer",
            "--work-dir",
            str(tmp_path / "work"),
            "--json",
            str(result_file),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    output = completed.stdout
    for line in (
        "samples/s (steady state",
        "samples per CPU-second",
        "start -> first step (s)",
        "throughput vs Trainer",
        "CPU ms per optimizer step, by phase:",
    ):
        assert line in output, output

    document = json.loads(result_file.read_text(encoding="utf-8"))
    medians = document["summary"]["medians"]
    assert set(medians) == {"kubetune", "trainer"}
    for side, figures in medians.items():
        assert figures["steps"] == 4, (side, figures)  # 64 examples / batch 16, one epoch, on both sides
        assert figures["samples_per_second"] > 0, (side, figures)
        assert figures["samples_per_cpu_second"] > 0, (side, figures)
        assert 0 < figures["first_step_seconds"] < figures["wall_seconds"], (side, figures)
        assert 0.0 <= figures["metric"] <= 1.0, (side, figures)
    for side, phases in document["summary"]["cpu_ms_per_step"].items():
        assert phases["backward"] > 0 and phases["optimizer"] > 0, (side, phases)
    assert document["summary"]["ratios"]["trainer"] == 1.0
    assert document["summary"]["ratios"]["kubetune"] > 0
