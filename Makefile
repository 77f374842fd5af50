# Two commands on a fresh machine:
#   make demo   — set up and run the offline example as 2 simulated nodes on this machine
#   make test   — set up (venv, control plane, real test nodes, the two images) and pass every check and test
SHELL := /bin/bash
.ONESHELL:
.SHELLFLAGS := -euo pipefail -c

KUBETUNE_CACHE ?= $(HOME)/.cache/kubetune
export KUBETUNE_CACHE
# One thread per process: several training processes share few cores.
export OMP_NUM_THREADS ?= 1
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1
export TORCH_EXTENSIONS_DIR ?= $(KUBETUNE_CACHE)/torch_extensions

.PHONY: demo test lint typecheck venv cluster-bin node-bin kueue-bin s3-bin mlflow-server peer-bin coscheduling-bin images gpu-check
# Each recipe runs hack/setup-venv.sh itself (it creates the venv once, then only re-points the editable install).

venv:
	bash hack/setup-venv.sh >/dev/null

demo:
	venv=$$(bash hack/setup-venv.sh)
	"$$venv/bin/kubetune" run manifests/examples/offline.yaml --output "$${OUTPUT:-out/offline}"

cluster-bin:
	bash hack/cluster/build.sh

# The Kueue manager of the test cluster (sigs.k8s.io/kueue from the Go module proxy) and its CRDs.
kueue-bin:
	bash hack/kueue/build.sh

# The S3-compatible test server (gofakes3 from the Go module proxy, about 30 s cold) for the object storage tests.
s3-bin:
	bash hack/s3/build.sh

# The MLflow tracking server's own virtualenv (pinned in hack/mlflow/requirements.txt) for the tracking tests.
mlflow-server:
	bash hack/mlflow/setup.sh

# Kubeflow Trainer v2's and JobSet's controller managers, the side-by-side peer (issue 14), and their CRDs.
peer-bin:
	bash hack/peer/build.sh

# kube-scheduler with scheduler-plugins' Coscheduling plugin, built against the control plane's Kubernetes (so
# only the plugin compiles once cluster-bin has run), for the gang-scheduling tests without Kueue.
coscheduling-bin: cluster-bin
	bash hack/coscheduling/build.sh

# The real test nodes' binaries (kubelet, kube-proxy, CoreDNS) and system packages (containerd, runc, CNI).
node-bin:
	bash hack/nodes/install-packages.sh
	bash hack/nodes/build.sh

# The operator and trainer (CPU) images, built with a private dockerd and a Debian-made base, no registry;
# prints their docker-archive tars (cached under $(KUBETUNE_CACHE)/images) and refs as its last two lines.
images:
	bash hack/images/build.sh

lint:
	venv=$$(bash hack/setup-venv.sh)
	"$$venv/bin/ruff" check .
	"$$venv/bin/ruff" format --check .

typecheck:
	venv=$$(bash hack/setup-venv.sh)
	"$$venv/bin/mypy"

# One command on a GPU machine: kubetune's trainer against transformers.Trainer, ZeRO-2/3, a causal LM (one table).
gpu-check:
	venv=$$(bash hack/setup-venv.sh)
	"$$venv/bin/python" benchmarks/gpu_check.py

# Everything is built or reused from $(KUBETUNE_CACHE): the venv, the control plane, Kueue, the real nodes'
# binaries and the two images (their tests need root: network namespaces, cgroups, a private dockerd).
# hack/setup.sh builds them side by side and prints where they are (venv, cluster_bin, nodes_bin, kueue_bin).
test:
	setup=$$(bash hack/setup.sh)
	eval "$$setup"
	export KUBETUNE_CLUSTER_BIN="$$cluster_bin" KUBETUNE_NODES_BIN="$$nodes_bin" KUBETUNE_KUEUE_BIN="$$kueue_bin"
	export KUBETUNE_S3_BIN="$$s3_bin" KUBETUNE_MLFLOW_VENV="$$mlflow_venv"
	export KUBETUNE_PEER_BIN="$$peer_bin" KUBETUNE_COSCHEDULING_BIN="$$coscheduling_bin"
	export PATH="$$cluster_bin:$$venv/bin:$$PATH"
	export KUBETUNE_REQUIRE_CLUSTER=1
	ruff check .
	ruff format --check .
	mypy
	bash hack/test-lanes.sh $(PYTEST_ARGS)
