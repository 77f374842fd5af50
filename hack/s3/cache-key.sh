#!/usr/bin/env bash
# Prints the cache key of the S3 test server binary: its version plus a hash of everything that decides what
# gets built. build.sh and the Python fixture (tests/trainer/servers.py) both run this script, so they
# cannot disagree.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "${here}/versions.env"
digest="$(
  cd "${here}" &&
    for f in versions.env build.sh ../lib/go-build.sh modules/gofakes3/go.mod modules/gofakes3/go.sum \
      modules/gofakes3/main.go; do
      printf '%s\n' "${f}"
      cat "${f}"
    done | sha256sum | cut -c1-12
)"
echo "gofakes3-${GOFAKES3_VERSION}-${digest}"
