#!/usr/bin/env bash
# The system tools the tests need beyond Python and Go: openssl (the test control plane's certificates) and a
# C++ compiler (DeepSpeed compiles its CPU ops on first use), installed from Debian's packages when missing;
# and Go, which Debian's own package is too old for, so it is only checked.
set -euo pipefail
if ! command -v go >/dev/null; then
  echo "Go is needed to build the test control plane (hack/cluster/build.sh): install Go 1.25 or newer" >&2
  exit 1
fi
missing=()
command -v openssl >/dev/null || missing+=(openssl)
command -v g++ >/dev/null || missing+=(g++)
if ((${#missing[@]})); then
  echo "installing ${missing[*]} from Debian's packages" >&2
  sudo_cmd=()
  [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}" >&2
fi
