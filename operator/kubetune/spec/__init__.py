"""The FineTuneJob spec (torch-free): models, loading and error messages."""

from kubetune.spec.loading import Problem, SpecError, dump_job, load_job, load_jobs, parse_job, parse_spec
from kubetune.spec.models import (
    API_GROUP,
    API_VERSION,
    KIND,
    PLURAL,
    FineTuneJob,
    FineTuneJobSpec,
)

__all__ = [
    "API_GROUP",
    "API_VERSION",
    "KIND",
    "PLURAL",
    "FineTuneJob",
    "FineTuneJobSpec",
    "Problem",
    "SpecError",
    "dump_job",
    "load_job",
    "load_jobs",
    "parse_job",
    "parse_spec",
]
