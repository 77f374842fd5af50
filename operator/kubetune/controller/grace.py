"""How long a worker the operator deletes (suspend, gang restart, cleanup) gets to write its checkpoint.

A pod's terminationGracePeriodSeconds is fixed when it is created; a DELETE may give a longer one. The trainer
reports how long its last checkpoint took to write (status.lastCheckpoint.saveSeconds, measured over every
rank); a large ZeRO-3 checkpoint can take far longer than the spec's grace, and a worker killed mid-save
loses every step since the checkpoint before.
"""

from __future__ import annotations

import math

from kubetune.controller.children import TERMINATION_GRACE_SECONDS
from kubetune.spec.models import FineTuneJobSpec
from kubetune.spec.status import FineTuneJobStatus

# Measured save time x this: room for the steps that finish before the save starts (a stop is agreed after the
# step in progress and acted on one step later), and for a disk slower than when the figure was measured.
SAVE_TIME_SAFETY_FACTOR = 3.0
# The workers write lastCheckpoint themselves: a figure past this bound (minutes of a huge ZeRO-3 save, times
# the factor) is not believed beyond it, so that no report can hold a deletion for hours.
MAX_DERIVED_GRACE_SECONDS = 3600


def deletion_grace_seconds(spec: FineTuneJobSpec | None, status: FineTuneJobStatus) -> int | None:
    """gracePeriodSeconds for deleting workers: max(the spec's kubernetes.terminationGracePeriodSeconds (120
    when unset), SAVE_TIME_SAFETY_FACTOR x the last measured checkpoint save, at most
    MAX_DERIVED_GRACE_SECONDS), in whole seconds; None (the
    pods' own grace) when no save has been measured or the spec is unreadable."""
    report = status.last_checkpoint
    if spec is None or report is None or report.save_seconds is None:
        return None
    configured = spec.kubernetes.termination_grace_period_seconds or TERMINATION_GRACE_SECONDS
    derived = min(MAX_DERIVED_GRACE_SECONDS, math.ceil(SAVE_TIME_SAFETY_FACTOR * report.save_seconds))
    return max(configured, derived)
