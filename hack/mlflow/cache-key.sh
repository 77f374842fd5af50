#!/usr/bin/env bash
# Prints the cache key of the MLflow server's virtualenv: a hash of the pins and the setup script. setup.sh and
# the test fixture (tests/trainer/servers.py) both run this script, so they cannot disagree.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
digest="$(cd "${here}" && cat setup.sh requirements.txt | sha256sum | cut -c1-12)"
echo "mlflow-server-${digest}"
