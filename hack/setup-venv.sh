#!/usr/bin/env bash
# Create or reuse the project's virtualenv outside the repo, keyed by the dependency pins, and print its path.
# torch comes first: deepspeed's build step looks for it. Versions are pinned by requirements/constraints.txt.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${KUBETUNE_CACHE:-$HOME/.cache/kubetune}"
venv="${KUBETUNE_VENV:-$cache/venv}"
python="${PYTHON:-python3}"
# This script is in the key too: it chooses the extras.
key="$(cat "$root/pyproject.toml" "$root/requirements/constraints.txt" "$root/hack/setup-venv.sh" | sha256sum | cut -c1-16)"
stamp="$venv/.kubetune-deps-$key"

if [[ ! -x "$venv/bin/python" ]]; then
  echo "creating virtualenv $venv" >&2
  "$python" -m venv "$venv"
fi
if [[ ! -f "$stamp" ]]; then
  echo "installing dependencies into $venv (first run downloads torch: several GB)" >&2
  pip=("$venv/bin/python" -m pip install --disable-pip-version-check -q)
  "${pip[@]}" --upgrade pip setuptools wheel >&2
  "${pip[@]}" -c "$root/requirements/constraints.txt" torch >&2
  # wandb: the optional extra of the trainer image, here so that the tracking tests run W&B for real (offline).
  "${pip[@]}" -c "$root/requirements/constraints.txt" -e "$root[train,dev,wandb]" >&2
  rm -f "$venv"/.kubetune-deps-*
  touch "$stamp"
else
  # The editable install points at this checkout; CI clones elsewhere, so re-point it (fast, no downloads).
  "$venv/bin/python" -m pip install --disable-pip-version-check -q --no-deps -e "$root" >&2
fi
echo "$venv"
