#!/usr/bin/env bash
# Builds (or reuses) the side-by-side peer of issue 14 from the Go module pinned under hack/peer/modules/peer:
# Kubeflow Trainer v2's controller manager (cmd/trainer-controller-manager) and JobSet's controller manager
# (the module's root package), and copies what they need from the same module sources next to them:
#   crd/       Trainer's CRDs (TrainJob, TrainingRuntime, ClusterTrainingRuntime) and JobSet's CRD
#   webhook/   trainer.yaml and jobset.yaml, each project's webhook registrations
#   runtimes/  Trainer's stock ClusterTrainingRuntimes (torch_distributed.yaml, ...), for reference
# They go to ${KUBETUNE_CACHE:-$HOME/.cache/kubetune}/peer/<key>/, <key> from cache-key.sh. Idempotent; the
# bin directory is the LAST line on stdout (everything else goes to stderr). Runs under `nice` with two
# compile jobs (KUBETUNE_BUILD_JOBS); one build at a time (flock).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "${here}/versions.env"
# shellcheck source=../lib/go-build.sh
source "${here}/../lib/go-build.sh"

go_build_prepare peer "$("${here}/cache-key.sh")" trainer-controller-manager jobset-controller-manager

module="${here}/modules/peer"
go_build "${module}" "-s -w" "${STAGING}/bin/trainer-controller-manager" \
  github.com/kubeflow/trainer/v2/cmd/trainer-controller-manager
go_build "${module}" "-s -w -X sigs.k8s.io/jobset/pkg/version.GitVersion=${JOBSET_VERSION}" \
  "${STAGING}/bin/jobset-controller-manager" sigs.k8s.io/jobset
trainer_dir="$(cd "${module}" && go list -m -f '{{.Dir}}' github.com/kubeflow/trainer/v2)"
jobset_dir="$(cd "${module}" && go list -m -f '{{.Dir}}' sigs.k8s.io/jobset)"
mkdir -p "${STAGING}/crd" "${STAGING}/webhook" "${STAGING}/runtimes"
cp "${trainer_dir}"/manifests/base/crds/trainer.kubeflow.org_*.yaml "${STAGING}/crd/"
cp "${jobset_dir}"/config/components/crd/bases/*.yaml "${STAGING}/crd/"
cp "${trainer_dir}/manifests/base/webhook/manifests.yaml" "${STAGING}/webhook/trainer.yaml"
cp "${jobset_dir}/config/components/webhook/manifests.yaml" "${STAGING}/webhook/jobset.yaml"
cp "${trainer_dir}"/manifests/base/runtimes/*.yaml "${STAGING}/runtimes/"
rm -f "${STAGING}/runtimes/kustomization.yaml"
chmod u+w "${STAGING}"/crd/*.yaml "${STAGING}"/webhook/*.yaml "${STAGING}"/runtimes/*.yaml
cp "${here}/versions.env" "${STAGING}/versions.env"
go_build_finish
