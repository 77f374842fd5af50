#!/usr/bin/env bash
# Creates (or reuses) the virtualenv of the MLflow tracking server that the tracking tests start on loopback
# (issue 13), from the exact pins in requirements.txt, under
# ${KUBETUNE_CACHE:-$HOME/.cache/kubetune}/mlflow/<key> (<key> from cache-key.sh); prints its path LAST.
#
# Why a virtualenv of its own: the server (PyPI `mlflow`, 3.17.2 the newest whose mlflow-skinny PyPI serves)
# requires pyarrow < 26, and the project's venv holds pyarrow 26 (datasets). The trainer needs only the client
# side, mlflow-skinny, which is in the project's `train` extra.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_root="${KUBETUNE_CACHE:-${HOME}/.cache/kubetune}"
dest="${cache_root}/mlflow/$("${here}/cache-key.sh")"
if [[ -x "${dest}/bin/mlflow" ]]; then
  echo "reusing ${dest}" >&2
  echo "${dest}"
  exit 0
fi
mkdir -p "${cache_root}/mlflow"
exec 9>"${cache_root}/mlflow/.setup.lock"
flock 9
if [[ -x "${dest}/bin/mlflow" ]]; then
  echo "${dest}"
  exit 0
fi
staging="$(mktemp -d "${cache_root}/mlflow/.setup-XXXXXX")"
# shellcheck disable=SC2064 # expand now
trap "rm -rf '${staging}'" EXIT
start=${SECONDS}
"${PYTHON:-python3}" -m venv "${staging}"
"${staging}/bin/python" -m pip install --disable-pip-version-check -q --no-deps -r "${here}/requirements.txt" >&2
"${staging}/bin/python" -m pip check >&2
rm -rf "${dest}"
mv "${staging}" "${dest}"
trap - EXIT
# The venv's scripts name the staging path in their #! line; re-point them at the final one.
grep -rl --null "${staging}" "${dest}/bin" | xargs -0 -r sed -i "s#${staging}#${dest}#g"
echo "set up in $((SECONDS - start))s" >&2
echo "${dest}"
