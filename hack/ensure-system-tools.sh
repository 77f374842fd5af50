#!/usr/bin/env bash
# The system tools the tests need beyond Python and Go: openssl (the test control plane's certificates) and a
# C++ compiler (DeepSpeed compiles its CPU ops on first use). Installed from Debian's packages when missing.
set -euo pipefail
missing=()
command -v openssl >/dev/null || missing+=(openssl)
command -v g++ >/dev/null || missing+=(g++)
command -v go >/dev/null || missing+=(golang-go)
if ((${#missing[@]})); then
  echo "installing ${missing[*]} from Debian's packages" >&2
  sudo_cmd=()
  [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}" >&2
fi
