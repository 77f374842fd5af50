#!/usr/bin/env bash
# Installs the Debian packages that the real test nodes need (tests/nodes, tests/kube/nodes*.py):
#   containerd + runc              the container runtime each node runs (its own instance per node);
#   containernetworking-plugins    bridge, host-local, loopback, portmap CNI plugins (/usr/lib/cni);
#   iproute2                       `ip netns`, veth pairs and bridges inside the harness's namespaces;
#   iptables + conntrack           kube-proxy's iptables mode inside each node namespace;
#   mmdebstrap                     the Debian minbase root filesystem of the test image (python3);
#   gcc + libc6-dev                the static pause (sandbox) binary.
# Only missing packages are installed (one `apt-get update`, only when something is missing), so a warm
# machine pays a `dpkg-query` and nothing else. Uses sudo when not root. The real nodes themselves need
# root (network namespaces, cgroups, mounts).
set -euo pipefail
packages=(containerd runc containernetworking-plugins iproute2 iptables conntrack mmdebstrap gcc libc6-dev)
missing=()
for package in "${packages[@]}"; do
  status="$(dpkg-query -W -f='${Status}' "${package}" 2>/dev/null || true)"
  [[ "${status}" == "install ok installed" ]] || missing+=("${package}")
done
if ((${#missing[@]} == 0)); then
  echo "node packages already installed" >&2
  exit 0
fi
echo "installing ${missing[*]}" >&2
sudo_cmd=()
[[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
# Other setup steps may hold the dpkg lock (parallel installs on a CI machine): wait rather than fail.
apt_options=(-o DPkg::Lock::Timeout=600 -q)
"${sudo_cmd[@]}" apt-get "${apt_options[@]}" update >&2
"${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get "${apt_options[@]}" install -y --no-install-recommends "${missing[@]}" >&2
# Debian starts the packaged containerd as a system service where systemd runs; the nodes run their own
# instances with their own sockets and never use that one, so it is left as the package made it.
