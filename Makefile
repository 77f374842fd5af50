# Two commands on a fresh machine:
#   make demo   — set up and run the offline example as 2 simulated nodes on this machine
#   make test   — set up (venv, Kubernetes control-plane binaries) and pass every check and test
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

.PHONY: demo test lint typecheck venv cluster-bin images
# Each recipe runs hack/setup-venv.sh itself (it creates the venv once, then only re-points the editable install).

venv:
	bash hack/setup-venv.sh >/dev/null

demo:
	venv=$$(bash hack/setup-venv.sh)
	"$$venv/bin/kubetune" run manifests/examples/offline.yaml --output "$${OUTPUT:-out/offline}"

cluster-bin:
	bash hack/cluster/build.sh

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

test:
	bash hack/ensure-system-tools.sh
	venv=$$(bash hack/setup-venv.sh)
	bin=$$(bash hack/cluster/build.sh | tail -n 1)
	export KUBETUNE_CLUSTER_BIN="$$bin" PATH="$$bin:$$venv/bin:$$PATH" KUBETUNE_REQUIRE_CLUSTER=1
	ruff check .
	ruff format --check .
	mypy
	python -m pytest tests $(PYTEST_ARGS)
