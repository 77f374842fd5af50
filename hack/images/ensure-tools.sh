#!/usr/bin/env bash
# The system tools `make images` needs, from Debian's packages when missing: docker.io (dockerd, containerd,
# runc, the docker client) and mmdebstrap (the Debian bases).
# docker.io's package scripts would start the system's Docker service, which creates the docker0 bridge and
# iptables rules in the host's network namespace: a policy-rc.d that refuses service starts is in place for
# the install, and where systemd runs, the service and its socket are disabled afterwards. kubetune only runs
# its own private daemon (hack/images/dockerd.sh), without bridge or iptables.
set -euo pipefail
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
[[ -x /usr/bin/docker ]] || command -v docker >/dev/null || missing+=(docker.io)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
((${#missing[@]})) || exit 0
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
echo "installing ${missing[*]} from Debian's packages" >&2
sudo_cmd=()
[[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
policy=/usr/sbin/policy-rc.d
added_policy=0
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\n# kubetune: no service starts while docker.io installs\nexit 101\n' | "${sudo_cmd[@]}" tee "$policy" >/dev/null
  "${sudo_cmd[@]}" chmod +x "$policy"
  added_policy=1
fi
remove_policy() { if ((added_policy)); then "${sudo_cmd[@]}" rm -f "$policy"; fi; }
trap remove_policy EXIT
"${sudo_cmd[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
  "${sudo_cmd[@]}" systemctl disable --now docker.service docker.socket >&2 || true
fi
