"""Who controls an existing object that has the name of one of a job's children. Pure.

Children are create-only: when a create answers AlreadyExists, the operator reads the object and decides
with `control_of` what it may do with it (the convention of Kubernetes' own controllers, JobSet and
Kubeflow Trainer: never adopt or overwrite what the job does not control):

- `OURS`: its controller ownerReference carries this job's uid. It may be converged (server-side apply with
  the operator's one field manager), or deleted as part of a gang restart.
- `PREVIOUS_JOB`: its controller is a FineTuneJob *of this name* with another uid, i.e. an earlier job of the
  same name that has been deleted (names are unique in a namespace, so that owner no longer exists). The
  garbage collector is about to delete it anyway; the operator may delete it (uid precondition) and create
  its own in its place instead of waiting.
- `FOREIGN`: no controller, or a controller that is anything else (a user's ConfigMap, another job's
  Service). The operator never touches it: it reports the conflict on the job (condition + Warning Event
  naming the object and the fix) and creates no workers that would use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from kubetune.spec.models import API_GROUP, KIND


class Control(StrEnum):
    OURS = "Ours"
    PREVIOUS_JOB = "PreviousJob"
    FOREIGN = "Foreign"


def controller_reference(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The ownerReference with controller: true, or None."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return dict(ref)
    return None


def control_of(obj: dict[str, Any], job_name: str, job_uid: str) -> Control:
    """Whether the FineTuneJob `job_name`/`job_uid` controls `obj` (see the module docstring)."""
    ref = controller_reference(obj)
    if ref is None:
        return Control.FOREIGN
    if ref.get("uid") == job_uid:
        return Control.OURS
    group = str(ref.get("apiVersion", "")).split("/", 1)[0]
    if ref.get("kind") == KIND and group == API_GROUP and ref.get("name") == job_name:
        return Control.PREVIOUS_JOB
    return Control.FOREIGN


def describe_controller(obj: dict[str, Any]) -> str:
    """'FineTuneJob other (uid …)' or 'none', for messages."""
    ref = controller_reference(obj)
    if ref is None:
        return "none"
    return f"{ref.get('kind', '?')} {ref.get('name', '?')} (uid {ref.get('uid', '?')})"


# Children that no worker needs in order to train: the progress RoleBinding only lets rank 0 write live
# progress (and the trainer's status sink never stops training when it cannot). A problem with one (someone
# else's object under its name, a 403, a webhook's refusal) is reported, and the job goes on without live
# progress: its workers are created and kept.
PROGRESS_ONLY_KINDS = frozenset({"RoleBinding"})


class ChildProblemReason(StrEnum):
    NOT_CONTROLLED = "ChildNotControlled"  # an object of that name exists and the job does not control it
    CREATE_REFUSED = "ChildCreateRefused"  # quota, a webhook, a policy engine refused the create
    UPDATE_REFUSED = "ChildUpdateRefused"  # the job's own child could not be converged


@dataclass(frozen=True)
class ChildProblem:
    """Why one child of a job is not as it should be."""

    kind: str
    name: str
    reason: ChildProblemReason
    message: str

    @property
    def blocking(self) -> bool:
        """True when workers must not be created: the child is missing or is someone else's object, and the
        workers need it (not a PROGRESS_ONLY_KINDS child)."""
        return self.reason != ChildProblemReason.UPDATE_REFUSED and self.kind not in PROGRESS_ONLY_KINDS

    def describe(self) -> str:
        """'Kind name: what is wrong and the fix', plus what the job does meanwhile when it does not wait."""
        described = f"{self.kind} {self.name}: {self.message}"
        if self.kind in PROGRESS_ONLY_KINDS:
            described += "; until then the job runs without live progress (status.progress is not updated)"
        return described


def not_controlled(kind: str, name: str, existing: dict[str, Any]) -> ChildProblem:
    """The problem for an existing object of a child's name that the job does not control."""
    return ChildProblem(
        kind,
        name,
        ChildProblemReason.NOT_CONTROLLED,
        f"exists and is not controlled by this FineTuneJob (controller: {describe_controller(existing)}); "
        f"kubetune will not adopt or change it: delete or rename that {kind}, or rename the job",
    )
