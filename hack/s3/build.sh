#!/usr/bin/env bash
# Builds (or reuses) the S3-compatible test server (our command over gofakes3's S3 handler,
# modules/gofakes3/main.go) from the Go module pinned under hack/s3/modules/gofakes3. It goes to
# ${KUBETUNE_CACHE:-$HOME/.cache/kubetune}/s3/<key>/bin/gofakes3, <key> from cache-key.sh. Idempotent; the bin
# directory is the LAST line on stdout (everything else goes to stderr).
# Runs under `nice` with two compile jobs (KUBETUNE_BUILD_JOBS); one build at a time (flock).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "${here}/versions.env"
# shellcheck source=../lib/go-build.sh
source "${here}/../lib/go-build.sh"

go_build_prepare s3 "$("${here}/cache-key.sh")" gofakes3

go_build "${here}/modules/gofakes3" "-s -w" "${STAGING}/bin/gofakes3" .
cp "${here}/versions.env" "${STAGING}/versions.env"
go_build_finish
