#!/usr/bin/env bash
# Prints the cache key of the S3 test server binary: its version plus a hash of everything that decides what
# gets built (our command, main.go, included). build.sh and the Python fixture (tests/trainer/s3_server.py)
# both run this script, so they cannot disagree.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "${here}/versions.env"
# shellcheck source=../lib/go-module.sh
source "${here}/../lib/go-module.sh"
go_module_key "${here}" "gofakes3-${GOFAKES3_VERSION}" \
  versions.env build.sh ../lib/go-build.sh modules/gofakes3/go.mod modules/gofakes3/go.sum modules/gofakes3/main.go
