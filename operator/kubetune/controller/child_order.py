"""In which order a job's children and its workers are written. Pure.

A worker mounts the ConfigMap, runs as the ServiceAccount (and gets its token), is found by its peers through
the headless Service and scheduled through the PodGroup; the Role is what the job's RoleBinding grants that
ServiceAccount. A worker created while one of them is missing or someone else's object would use that object,
if only until the next reconcile found out and deleted it: a user's ServiceAccount's token in the job's pods,
a user's ConfigMap as the job's config. So they are all written first, in one parallel round trip, and the
workers only once every one of them exists and is the job's (`report_children` clears the workers otherwise).

The RoleBinding is the one child written in the same parallel batch as the workers: RBAC checks a binding
against its Role, which must exist first, so holding the workers for it would cost a second round trip on the
path from `kubectl apply` to the pods. No worker uses it when it is created: it only lets rank 0 write live
progress, seconds later, as the job's own ServiceAccount. It is written only when its Role is the job's:
binding a user's Role of that name would grant its rules to the job's ServiceAccount, so to the workers. A
problem with the RoleBinding itself (someone else's object under its name, a refused create) holds nothing,
whether it is found before the workers or with them: it is reported, and the job runs without live progress
(`ownership.PROGRESS_ONLY_KINDS`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kubetune.controller.ownership import ChildProblem

# Kinds written together with the workers instead of before them (see the module docstring).
WITH_WORKERS = frozenset({"RoleBinding"})


@dataclass(frozen=True)
class ChildOrder:
    """A job's children split by when they are written."""

    before_workers: list[dict[str, Any]]  # every worker waits for these, all written at once
    with_workers: list[dict[str, Any]]  # written in the workers' own parallel batch


def order_children(children: Sequence[dict[str, Any]], troubled: bool = False) -> ChildOrder:
    """Split `children` into those written before the workers and those written with them.

    `troubled`: the job's children had a problem last time; all of them go first (a new job is not held up by
    that second round trip, and a job in trouble ends up waiting for every child, which is what it reports).
    """
    if troubled:
        return ChildOrder(list(children), [])
    return ChildOrder(
        [c for c in children if c["kind"] not in WITH_WORKERS],
        [c for c in children if c["kind"] in WITH_WORKERS],
    )


def binding_blocked_by(binding: dict[str, Any], problems: Sequence[ChildProblem]) -> ChildProblem | None:
    """The blocking problem of the Role that the RoleBinding `binding` grants, or None when it may be written.

    A Role that is missing or someone else's must not be bound to the job's ServiceAccount (an update the
    API server refused to the job's own Role does not block: the Role is still the job's).
    """
    role = (binding.get("roleRef") or {}).get("name")
    return next((p for p in problems if p.kind == "Role" and p.name == role and p.blocking), None)
