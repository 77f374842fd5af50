"""Regenerate the offline example's data (deterministic): `python manifests/examples/data/generate.py`.

The files are committed so that manifests/examples/offline.yaml points at real files; a test checks that they
are exactly what this script writes.
"""

from __future__ import annotations

from pathlib import Path

from kubetune_trainer.synthetic import write_paraphrase_dataset

FOLDER = Path(__file__).resolve().parent / "paraphrase"
# Sized for a few minutes on 2 CPU cores while still reaching ≥ 0.9 eval accuracy with all-MiniLM-L6-v2.
SIZES = {"n_train": 1200, "n_eval": 400, "seed": 0}


def generate(folder: Path = FOLDER) -> tuple[Path, Path]:
    """Write train.jsonl and eval.jsonl into `folder`. Returns their paths."""
    return write_paraphrase_dataset(folder, **SIZES)


if __name__ == "__main__":
    for path in generate():
        print(path)
