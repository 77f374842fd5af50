"""Kubernetes' own rules for the strings kubetune copies onto the objects it creates: DNS names, label keys and
values, annotation keys, environment variable names and Secret keys (k8s.io/apimachinery's
`pkg/util/validation` and the pod validation of Kubernetes 1.36).

A value the API server would refuse on a worker pod is refused here, where it enters the system (`kubetune
validate`, and the CRD's schema and CEL rules at `kubectl apply`), instead of at reconcile time. Each check
returns None when the value is valid, else a sentence saying what is wrong and what the rule is.

The patterns are used by pydantic (Rust's regex), by the CRD's OpenAPI schema and CEL rules (Go's RE2) and
here with Python's `re.fullmatch`: they keep to what all three read alike (ASCII classes only). The annotated
types at the end (`ObjectName`, `SecretKey`) carry them into the spec's fields, so a Secret's name or key has one
set of constraints wherever the spec asks for one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Final

from pydantic import StringConstraints

DNS_LABEL_MAX: Final = 63
DNS_SUBDOMAIN_MAX: Final = 253
LABEL_VALUE_MAX: Final = 63
QUALIFIED_NAME_MAX: Final = 63  # the part after the prefix
# The API server's bound on all annotations of one object together (keys and values, in bytes).
TOTAL_ANNOTATION_BYTES: Final = 256 * 1024
CONFIG_KEY_MAX: Final = 253

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_SUBDOMAIN = rf"{_DNS_LABEL}(\.{_DNS_LABEL})*"
_NAME_PART = r"([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]"

DNS_SUBDOMAIN_PATTERN: Final = rf"^{_SUBDOMAIN}$"
LABEL_VALUE_PATTERN: Final = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
# A label or annotation key: an optional DNS-subdomain prefix and '/', then a name of at most 63 characters
# (the prefix's own bound of 253 is checked apart: a regex cannot count across its parts).
QUALIFIED_NAME_PATTERN: Final = rf"^({_SUBDOMAIN}/)?{_NAME_PART}$"
# Kubernetes 1.34+ (RelaxedEnvironmentVariableValidation, GA): any printable ASCII character but '='.
ENV_NAME_PATTERN: Final = r"^[ -<>-~]+$"
# A key of a Secret or ConfigMap: letters, digits, '-', '_' and '.', but not '.', '..' nor '..'-prefixed (it
# becomes a file name when mounted): RE2 has no look-ahead, so "a first character other than '.', or one '.'
# and then such a character".
CONFIG_KEY_PATTERN: Final = r"^\.?[-_a-zA-Z0-9][-._a-zA-Z0-9]*$"
QUALIFIED_KEY_MAX: Final = DNS_SUBDOMAIN_MAX + 1 + QUALIFIED_NAME_MAX
DNS_LABEL_PATTERN: Final = rf"^{_DNS_LABEL}$"

# A resource quantity (k8s.io/apimachinery's resource.Quantity: <sign><number><suffix>, the suffix a binary SI
# (Ki..Ei), decimal SI (n, u, m, k, M..E) or e<integer>), here without the '-' sign: every quantity a pod takes
# from a FineTuneJob (requests, limits, emptyDir sizes) must be >= 0. The exponent is an integer (the grammar of
# controller-gen's Quantity pattern allows a fraction there, which ParseQuantity refuses) of at most 2 digits:
# 1e99 is far beyond any resource (the scheduler saturates at int64), and a larger exponent would make the
# operator's sums for a PodGroup's minResources overflow.
_QUANTITY_NUMBER = r"([0-9]+(\.[0-9]*)?|\.[0-9]+)"
QUANTITY_PATTERN: Final = rf"^\+?{_QUANTITY_NUMBER}([KMGTPE]i|[numkMGTPE]|[eE][-+]?[0-9]{{1,2}})?$"
# An extended resource (a device) is counted in whole units (the API server refuses a fraction of one): a
# whole number, optionally with a suffix that keeps it whole.
WHOLE_QUANTITY_PATTERN: Final = r"^\+?[0-9]+([KMGTPE]i|[kMGTPE]|[eE]\+?[0-9]{1,2})?$"
QUANTITY_MAX: Final = 64

# The name of another object in the job's namespace (a Secret, a ServiceAccount, a PriorityClass, a scheduler):
# a DNS subdomain.
ObjectName = Annotated[
    str, StringConstraints(min_length=1, max_length=DNS_SUBDOMAIN_MAX, pattern=DNS_SUBDOMAIN_PATTERN)
]
# A key of a Secret (or ConfigMap) that a worker reads a value from.
SecretKey = Annotated[
    str, StringConstraints(min_length=1, max_length=CONFIG_KEY_MAX, pattern=CONFIG_KEY_PATTERN)
]


def dns_subdomain_problem(value: str) -> str | None:
    """Why `value` is not a DNS-1123 subdomain (the name of most objects), or None."""
    if len(value) > DNS_SUBDOMAIN_MAX:
        return f"is {len(value)} characters long: at most {DNS_SUBDOMAIN_MAX} are allowed"
    if not re.fullmatch(DNS_SUBDOMAIN_PATTERN[1:-1], value):
        return (
            "must be a DNS subdomain: lowercase letters, digits, '-' and '.', starting and ending with a letter "
            "or digit"
        )
    return None


def qualified_name_problem(key: str) -> str | None:
    """Why `key` is not a valid label key (Kubernetes' IsQualifiedName: [prefix/]name), or None."""
    prefix, slash, name = key.rpartition("/")
    if slash and not prefix:
        return "has an empty prefix before '/': write prefix/name or just name"
    if prefix and "/" in prefix:
        return "has more than one '/': write prefix/name or just name"
    if not name:
        return "has an empty name: write prefix/name or just name"
    if len(name) > QUALIFIED_NAME_MAX:
        return f"has a name part of {len(name)} characters: at most {QUALIFIED_NAME_MAX} are allowed"
    if not re.fullmatch(_NAME_PART, name):
        return (
            "has a name part that is not letters, digits, '-', '_' and '.', starting and ending with a letter "
            "or digit"
        )
    if prefix:
        problem = dns_subdomain_problem(prefix)
        if problem:
            return f"has a prefix that {problem}"
    return None


def _go_lower(key: str) -> str:
    """Go's strings.ToLower for what matters here: the two characters whose simple lowercase is ASCII
    (Python's own lower() makes 'İ' two characters)."""
    return "".join("i" if char == "\u0130" else char.lower() for char in key)


def annotation_key_problem(key: str, *, ascii_only: bool = False) -> str | None:
    """Why `key` is not a valid annotation key, or None. The API server checks the lowercased key (so a
    prefix may have capitals); `ascii_only` also refuses keys with non-ASCII characters that lowercase to
    ASCII (what the CRD's CEL rules can check: they lowercase ASCII only)."""
    if ascii_only and not key.isascii():
        return "must be ASCII"
    return qualified_name_problem(_go_lower(key))


def label_value_problem(value: str) -> str | None:
    """Why `value` is not a valid label value, or None (empty is valid)."""
    if len(value) > LABEL_VALUE_MAX:
        return f"is {len(value)} characters long: at most {LABEL_VALUE_MAX} are allowed"
    if not re.fullmatch(LABEL_VALUE_PATTERN[1:-1], value):
        return (
            "must be empty or letters, digits, '-', '_' and '.', starting and ending with a letter or digit"
        )
    return None


def env_name_problem(name: str) -> str | None:
    """Why `name` cannot name a container's environment variable, or None."""
    if not re.fullmatch(ENV_NAME_PATTERN[1:-1], name):
        return "must be one or more printable ASCII characters other than '='"
    return None


def config_key_problem(key: str) -> str | None:
    """Why `key` is not a valid key of a Secret or ConfigMap, or None."""
    if len(key) > CONFIG_KEY_MAX:
        return f"is {len(key)} characters long: at most {CONFIG_KEY_MAX} are allowed"
    if not re.fullmatch(CONFIG_KEY_PATTERN[1:-1], key):
        return "must be letters, digits, '-', '_' and '.', and not '.', '..' or start with '..'"
    return None


def annotations_size(annotations: Mapping[str, str]) -> int:
    """Bytes the API server counts against TOTAL_ANNOTATION_BYTES (every key and value, UTF-8)."""
    return sum(len(k.encode()) + len(v.encode()) for k, v in annotations.items())


def label_problems(labels: Mapping[str, str]) -> list[str]:
    """A message per invalid key or value of a label map."""
    problems = []
    for key, value in labels.items():
        key_problem = qualified_name_problem(key)
        if key_problem:
            problems.append(f"label key {key[:80]!r} {key_problem}")
        value_problem = label_value_problem(value)
        if value_problem:
            problems.append(f"the value {value[:80]!r} of label {key[:80]!r} {value_problem}")
    return problems


def annotation_problems(annotations: Mapping[str, str], *, ascii_only: bool = False) -> list[str]:
    """A message per invalid key of an annotation map, and one when they are too large together."""
    problems = []
    for key in annotations:
        problem = annotation_key_problem(key, ascii_only=ascii_only)
        if problem:
            problems.append(f"annotation key {key[:80]!r} {problem}")
    size = annotations_size(annotations)
    if size > TOTAL_ANNOTATION_BYTES:
        problems.append(
            f"the annotations take {size} bytes together: at most {TOTAL_ANNOTATION_BYTES} are allowed; move large "
            "data elsewhere (a ConfigMap)"
        )
    return problems


def dns_label_problem(value: str) -> str | None:
    """Why `value` is not a DNS-1123 label (a namespace name), or None."""
    if len(value) > DNS_LABEL_MAX:
        return f"is {len(value)} characters long: at most {DNS_LABEL_MAX} are allowed"
    if not re.fullmatch(DNS_LABEL_PATTERN[1:-1], value):
        return "must be a DNS label: lowercase letters, digits and '-', starting and ending with a letter or digit"
    return None


def quantity_problem(value: str, *, whole: bool = False) -> str | None:
    """Why `value` is not a resource quantity the API server takes on a pod (>= 0; `whole`: a whole number, as
    for extended resources), or None."""
    if len(value) > QUANTITY_MAX:
        return f"is {len(value)} characters long: at most {QUANTITY_MAX} are allowed"
    pattern = WHOLE_QUANTITY_PATTERN if whole else QUANTITY_PATTERN
    if re.fullmatch(pattern[1:-1], value):
        return None
    if whole:
        return (
            "is not a whole number of devices: write a count such as 1 or 8 (extended resources cannot be "
            "shared in fractions)"
        )
    return (
        "is not a Kubernetes quantity >= 0: write a number with an optional suffix, e.g. 500m, 8, 64Gi, 20G "
        "or 1e9 (suffixes Ki Mi Gi Ti Pi Ei, n u m k M G T P E)"
    )


EXTENDED_RESOURCE_EXAMPLE: Final = "nvidia.com/gpu"
EXTENDED_RESOURCE_DOMAIN_MAX: Final = DNS_SUBDOMAIN_MAX - len("requests.")


def extended_resource_name_problem(name: str) -> str | None:
    """Why `name` cannot name an extended resource (a device plugin's: domain/name, outside Kubernetes' own
    kubernetes.io domain; Kubernetes' IsExtendedResourceName), or None."""
    if "/" not in name:
        return f"is not an extended resource: write domain/name, e.g. {EXTENDED_RESOURCE_EXAMPLE}"
    if name.startswith("requests.") or "kubernetes.io/" in name:
        return (
            "is in a namespace Kubernetes keeps for its own resources (kubernetes.io/, requests.): use the device "
            f"plugin's name, e.g. {EXTENDED_RESOURCE_EXAMPLE}"
        )
    problem = qualified_name_problem(name)
    if problem:
        return f"is not a valid resource name: it {problem.replace('prefix', 'domain')}"
    # (The API server also checks "requests." + name, the name of its quota: the domain has 9 characters less.)
    domain = name.partition("/")[0]
    if len(domain) > EXTENDED_RESOURCE_DOMAIN_MAX:
        return f"has a domain of {len(domain)} characters: at most {EXTENDED_RESOURCE_DOMAIN_MAX} are allowed"
    return None
