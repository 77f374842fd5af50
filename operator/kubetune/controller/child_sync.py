"""Writing a job's children (Service, ConfigMap, progress RBAC, PodGroup): create-only, never taking over.
I/O.

Each child is created; when an object of its name exists, `ownership.control_of` decides: the job's own is
converged by server-side apply (one field manager), a leftover of a deleted job of the same name is
replaced, and anything else is left alone and reported. Refusals (ResourceQuota, a webhook, a policy
engine) are reported too: a child's failure never raises out of a reconcile, so the job's status is still
written with what failed (`plan.report_children`), and failure handling, deadlines and TTL still run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from kubetune.controller.child_order import binding_blocked_by
from kubetune.controller.kube import ApiError, Kube
from kubetune.controller.ownership import (
    ChildProblem,
    ChildProblemReason,
    Control,
    control_of,
    not_controlled,
)
from kubetune.controller.pod_groups import MISSING_CRD_FIX

logger = logging.getLogger("kubetune.operator")

# Children of a kind that a CRD of someone else's defines: what to do when the API server does not serve it.
MISSING_KIND_FIXES = {"PodGroup": MISSING_CRD_FIX}

InParallel = Callable[[Callable[[dict[str, Any]], Any], list[dict[str, Any]]], list[Any]]


class ChildWriter:
    """Ensures children for the reconcile threads; `in_parallel` runs one action on many objects at once."""

    def __init__(self, kube: Kube, in_parallel: InParallel) -> None:
        self.kube = kube
        self.in_parallel = in_parallel

    def ensure(
        self,
        job_name: str,
        job_uid: str,
        children: list[dict[str, Any]],
        known: Sequence[ChildProblem] = (),
    ) -> list[ChildProblem]:
        """Create or converge `children` of the job; returns the problems (empty: all as wanted).

        A RoleBinding whose Role has a blocking problem (among `known` or found here) is not written: it
        would bind someone else's Role to the job's ServiceAccount (`child_order.binding_blocked_by`).
        Raises only what is not an answer of the API server (connection errors), for the caller's retry.
        """
        problems: list[ChildProblem] = []
        # Two round trips: a RoleBinding is checked against its Role, so it goes once the rest exist (and
        # only when its Role is the job's: that is known after the first).
        problems += self._write_all(job_name, job_uid, [c for c in children if c["kind"] != "RoleBinding"])
        bindings = [
            c
            for c in children
            if c["kind"] == "RoleBinding" and binding_blocked_by(c, [*known, *problems]) is None
        ]
        problems += self._write_all(job_name, job_uid, bindings)
        return problems

    def _write_all(self, job_name: str, job_uid: str, children: list[dict[str, Any]]) -> list[ChildProblem]:
        problems: list[ChildProblem] = []
        outcomes = self.in_parallel(lambda child: self.ensure_one(job_name, job_uid, child), children)
        for outcome in outcomes:
            if isinstance(outcome, ChildProblem):
                problems.append(outcome)
            elif isinstance(outcome, Exception):
                raise outcome
        return problems

    def ensure_one(self, job_name: str, job_uid: str, child: dict[str, Any]) -> ChildProblem | None:
        """Create or converge one child; returns its problem, or None when it is as wanted.

        Raises what is not an answer of the API server (connection errors).
        """
        kind, metadata = child["kind"], child["metadata"]
        namespace, name = metadata["namespace"], metadata["name"]
        try:
            if self.kube.create(child):
                return None
            current = self.kube.get(kind, namespace, name)
            if current is None:  # deleted in between: create it the next time round
                return ChildProblem(
                    kind, name, ChildProblemReason.CREATE_REFUSED, "was deleted while being created"
                )
        except ApiError as error:
            message = f"cannot be created: {error}"
            if error.status == 404 and kind in MISSING_KIND_FIXES:
                # The kind itself is not served (a CRD not installed): say which field needs it, and the fix.
                message += f"; {MISSING_KIND_FIXES[kind]}"
            return ChildProblem(kind, name, ChildProblemReason.CREATE_REFUSED, message)
        control = control_of(current, job_name, job_uid)
        if control == Control.OURS:
            try:
                self.kube.apply(child)
            except ApiError as error:
                return ChildProblem(
                    kind, name, ChildProblemReason.UPDATE_REFUSED, f"cannot be updated: {error}"
                )
            return None
        if control == Control.PREVIOUS_JOB:
            # The earlier job of this name is gone and the garbage collector is about to delete this
            # object: do it now (only that very object: uid precondition) and create ours.
            logger.info("replacing %s %s/%s left by an earlier job of that name", kind, namespace, name)
            try:
                self.kube.delete(kind, namespace, name, current["metadata"]["uid"])
                if self.kube.create(child):
                    return None
            except ApiError as error:
                return ChildProblem(
                    kind, name, ChildProblemReason.CREATE_REFUSED, f"cannot be replaced: {error}"
                )
            return ChildProblem(
                kind,
                name,
                ChildProblemReason.CREATE_REFUSED,
                "is left by an earlier job of this name and still being deleted",
            )
        return not_controlled(kind, name, current)
