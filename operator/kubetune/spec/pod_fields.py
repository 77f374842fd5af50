"""Blocks of spec.kubernetes that go onto the worker pods as they are written: tolerations, affinity, resource
quantities and extra volume sources, typed and checked with Kubernetes' own rules (the pod validation of
Kubernetes 1.36), so that a value the API server would refuse on a pod is refused at `kubectl apply` and by
`kubetune validate`, naming the field, instead of failing every pod create of a running job.

Each model's cross-field rules have CEL twins in `kubetune.crd.CEL_RULES`; single-field rules are OpenAPI
patterns and bounds, plus a CEL rule on the field for the one thing a pattern cannot count (the length of a label
key's prefix: `PREFIX_RULE`). Lists are bounded (Kubernetes does not bound them) so that the CRD's CEL rules
fit the API server's cost budget; the bounds are far above what a placement rule needs.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, Final, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from kubetune.spec import kube_names
from kubetune.spec.base import SpecModel
from kubetune.spec.kube_names import (
    DNS_LABEL_MAX,
    DNS_LABEL_PATTERN,
    DNS_SUBDOMAIN_MAX,
    DNS_SUBDOMAIN_PATTERN,
    LABEL_VALUE_MAX,
    LABEL_VALUE_PATTERN,
    QUALIFIED_KEY_MAX,
    QUALIFIED_NAME_PATTERN,
    QUANTITY_MAX,
    QUANTITY_PATTERN,
    WHOLE_QUANTITY_PATTERN,
)

MAX_TERMS: Final = 16  # node selector terms, pod affinity terms, weighted terms
MAX_REQUIREMENTS: Final = 16  # matchExpressions / matchFields of one term or selector
MAX_VALUES: Final = 64  # values of one requirement, namespaces of one term
MAX_MATCH_LABELS: Final = 64
MAX_TOLERATIONS: Final = 64
# A Gt/Lt node selector value: the scheduler reads it with strconv.ParseInt (int64), so it must be an integer;
# any other value can never match (the pods would never schedule).
INTEGER_VALUE_PATTERN: Final = r"^[-+]?[0-9]{1,18}$"

# CEL on a single string field, added to its schema (a pattern cannot bound the prefix of a qualified name).
PREFIX_RULE: Final = {
    "rule": f"!self.contains('/') || self.indexOf('/') <= {DNS_SUBDOMAIN_MAX}",
    "message": f"the prefix before '/' must be a DNS subdomain of at most {DNS_SUBDOMAIN_MAX} characters",
}


def _checked(check: Callable[[str], str | None], fix: str = "") -> AfterValidator:
    """A pydantic validator refusing a string for which `check` gives a problem: "'value' problem[; fix]"."""

    def validate(value: str) -> str:
        problem = check(value)
        if problem:
            raise ValueError(f"'{value[:80]}' {problem}{'; ' + fix if fix else ''}")
        return value

    return AfterValidator(validate)


def _schema(pattern: str, max_length: int, *rules: dict[str, str]) -> Any:
    """The OpenAPI constraints the API server checks for a string the Python validator checks."""
    extra: dict[str, Any] = {"pattern": pattern, "maxLength": max_length}
    if rules:
        extra["x-kubernetes-validations"] = list(rules)
    return Field(json_schema_extra=extra)


def _label_key_problem(key: str) -> str | None:
    problem = kube_names.qualified_name_problem(key)
    return f"is not a label key: it {problem}" if problem else None


def _optional_label_key_problem(key: str) -> str | None:
    return _label_key_problem(key) if key else None


# A label key, taint key or topology key (Kubernetes' IsQualifiedName: [prefix/]name).
QualifiedName = Annotated[
    str,
    _checked(_label_key_problem, "write [prefix/]name, e.g. topology.kubernetes.io/zone"),
    _schema(QUALIFIED_NAME_PATTERN, QUALIFIED_KEY_MAX, PREFIX_RULE),
]
LabelValueText = Annotated[
    str,
    _checked(kube_names.label_value_problem),
    _schema(LABEL_VALUE_PATTERN, LABEL_VALUE_MAX),
]
# The name of a Secret (an image pull secret): a DNS subdomain.
SecretName = Annotated[
    str,
    _checked(kube_names.dns_subdomain_problem, "use the Secret's name, e.g. registry-creds"),
    _schema(DNS_SUBDOMAIN_PATTERN, DNS_SUBDOMAIN_MAX),
]
# A pod's volume name: a DNS label.
VolumeName = Annotated[
    str,
    _checked(kube_names.dns_label_problem, "e.g. infiniband or shared-data"),
    _schema(DNS_LABEL_PATTERN, DNS_LABEL_MAX),
]
NamespaceName = Annotated[
    str, _checked(kube_names.dns_label_problem), _schema(DNS_LABEL_PATTERN, DNS_LABEL_MAX)
]
NodeName = Annotated[
    str, _checked(kube_names.dns_subdomain_problem), _schema(DNS_SUBDOMAIN_PATTERN, DNS_SUBDOMAIN_MAX)
]
# CPU, memory, emptyDir sizes: a quantity >= 0.
Quantity = Annotated[str, _checked(kube_names.quantity_problem), _schema(QUANTITY_PATTERN, QUANTITY_MAX)]
# Extended resources (devices): a whole number.
WholeQuantity = Annotated[
    str,
    _checked(lambda value: kube_names.quantity_problem(value, whole=True)),
    _schema(WHOLE_QUANTITY_PATTERN, QUANTITY_MAX),
]


# --- tolerations ------------------------------------------------------------------------------------------------


class Toleration(SpecModel):
    key: (
        Annotated[
            str,
            _checked(_optional_label_key_problem, "write [prefix/]name, e.g. nvidia.com/gpu"),
            _schema(f"^({QUALIFIED_NAME_PATTERN[1:-1]})?$", QUALIFIED_KEY_MAX, PREFIX_RULE),
        ]
        | None
    ) = Field(
        default=None,
        description="Taint key the toleration matches (a label key); empty with Exists: every taint.",
    )
    operator: Literal["Exists", "Equal"] | None = Field(
        default=None, description="Exists (any value) or Equal (the value); unset: Equal."
    )
    value: LabelValueText | None = Field(
        default=None, description="Taint value (a label value; operator Equal only)."
    )
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect matched; unset matches all."
    )
    toleration_seconds: int | None = Field(
        default=None,
        description="With effect NoExecute only: how long the worker stays bound to the tainted node.",
    )

    @model_validator(mode="after")
    def _kubernetes_rules(self) -> Toleration:
        if not self.key and self.operator != "Exists":
            raise ValueError(
                f"operator is '{self.operator or 'Equal'}' but key is empty: a toleration without a key must "
                "have operator: Exists (it then tolerates every taint); set key, or operator: Exists"
            )
        if self.operator == "Exists" and self.value:
            raise ValueError(
                f"operator is 'Exists' but value is '{self.value[:80]}': Exists matches every value; remove value, "
                "or use operator: Equal"
            )
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError(
                f"tolerationSeconds is {self.toleration_seconds} but effect is '{self.effect or ''}': "
                "tolerationSeconds applies to NoExecute taints only; set effect: NoExecute, or remove "
                "tolerationSeconds"
            )
        return self


# --- affinity ---------------------------------------------------------------------------------------------------


def _values_problem(operator: str, values: list[str]) -> str | None:
    """Kubernetes' rule on how many values a selector requirement's operator takes, or None."""
    if operator in ("In", "NotIn") and not values:
        return f"operator {operator} needs at least one value: add values, or use operator Exists"
    if operator in ("Exists", "DoesNotExist") and values:
        return f"operator {operator} takes no values (got {values[:3]}): remove values, or use operator In"
    if operator in ("Gt", "Lt"):
        if len(values) != 1:
            return f"operator {operator} takes exactly one value (got {len(values)}), an integer, e.g. ['8']"
        if not re.fullmatch(INTEGER_VALUE_PATTERN[1:-1], values[0]):
            return (
                f"operator {operator} compares with an integer, but the value is '{values[0][:80]}': write an "
                "integer, e.g. '8' (any other value never matches a node)"
            )
    return None


class LabelSelectorRequirement(SpecModel):
    key: QualifiedName = Field(description="Label key.")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(description="How the key is matched.")
    values: list[LabelValueText] = Field(
        default_factory=list, max_length=MAX_VALUES, description="Values (In and NotIn only)."
    )

    @model_validator(mode="after")
    def _values_count(self) -> LabelSelectorRequirement:
        problem = _values_problem(self.operator, self.values)
        if problem:
            raise ValueError(f"key '{self.key}': {problem}")
        return self


class LabelSelector(SpecModel):
    match_labels: dict[str, LabelValueText] = Field(
        default_factory=dict, max_length=MAX_MATCH_LABELS, description="Labels the pods must have."
    )
    match_expressions: list[LabelSelectorRequirement] = Field(
        default_factory=list, max_length=MAX_REQUIREMENTS, description="Label requirements (all must hold)."
    )

    @field_validator("match_labels", mode="after")
    @classmethod
    def _label_keys(cls, labels: dict[str, str]) -> dict[str, str]:
        problems = [f"key {k[:80]!r} {p}" for k in labels if (p := kube_names.qualified_name_problem(k))]
        if problems:
            raise ValueError("matchLabels: " + "; ".join(problems))
        return labels


class NodeSelectorRequirement(SpecModel):
    key: QualifiedName = Field(description="Node label key.")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"] = Field(
        description="How the label is matched (Gt and Lt compare integers)."
    )
    values: list[LabelValueText] = Field(
        default_factory=list,
        max_length=MAX_VALUES,
        description="Label values: one or more for In and NotIn, one integer for Gt and Lt, none otherwise.",
    )

    @model_validator(mode="after")
    def _values_count(self) -> NodeSelectorRequirement:
        problem = _values_problem(self.operator, self.values)
        if problem:
            raise ValueError(f"key '{self.key}': {problem}")
        return self


class NodeFieldRequirement(SpecModel):
    key: Literal["metadata.name"] = Field(description="The one node field a selector can match.")
    operator: Literal["In", "NotIn"] = Field(description="In or NotIn.")
    values: list[NodeName] = Field(min_length=1, max_length=1, description="One node name.")


class NodeSelectorTerm(SpecModel):
    match_expressions: list[NodeSelectorRequirement] = Field(
        default_factory=list,
        max_length=MAX_REQUIREMENTS,
        description="Node label requirements (all must hold).",
    )
    match_fields: list[NodeFieldRequirement] = Field(
        default_factory=list, max_length=MAX_REQUIREMENTS, description="Node field requirements."
    )


class NodeSelector(SpecModel):
    node_selector_terms: list[NodeSelectorTerm] = Field(
        min_length=1, max_length=MAX_TERMS, description="Terms of which at least one must hold."
    )


class PreferredSchedulingTerm(SpecModel):
    weight: int = Field(ge=1, le=100, description="Weight (1-100).")
    preference: NodeSelectorTerm = Field(description="The nodes preferred.")


class NodeAffinity(SpecModel):
    required_during_scheduling_ignored_during_execution: NodeSelector | None = Field(
        default=None, description="Nodes the workers must run on."
    )
    preferred_during_scheduling_ignored_during_execution: list[PreferredSchedulingTerm] = Field(
        default_factory=list, max_length=MAX_TERMS, description="Nodes the workers prefer."
    )


class PodAffinityTerm(SpecModel):
    label_selector: LabelSelector | None = Field(default=None, description="The pods (by label).")
    namespace_selector: LabelSelector | None = Field(default=None, description="Their namespaces (by label).")
    namespaces: list[NamespaceName] = Field(
        default_factory=list, max_length=MAX_VALUES, description="Their namespaces (by name)."
    )
    topology_key: QualifiedName = Field(
        description="Node label whose value defines co-location, e.g. topology.kubernetes.io/zone."
    )
    match_label_keys: list[QualifiedName] = Field(
        default_factory=list, max_length=MAX_REQUIREMENTS, description="Label keys whose values must match."
    )
    mismatch_label_keys: list[QualifiedName] = Field(
        default_factory=list, max_length=MAX_REQUIREMENTS, description="Label keys whose values must differ."
    )

    @model_validator(mode="after")
    def _label_keys_need_a_selector(self) -> PodAffinityTerm:
        if (self.match_label_keys or self.mismatch_label_keys) and self.label_selector is None:
            raise ValueError(
                "matchLabelKeys and mismatchLabelKeys refine labelSelector, which is unset: set labelSelector, "
                "or remove them"
            )
        both = sorted(set(self.match_label_keys) & set(self.mismatch_label_keys))
        if both:
            raise ValueError(
                f"keys {both} are in both matchLabelKeys and mismatchLabelKeys: keep each key in one of them"
            )
        return self


class WeightedPodAffinityTerm(SpecModel):
    weight: int = Field(ge=1, le=100, description="Weight (1-100).")
    pod_affinity_term: PodAffinityTerm = Field(description="The term.")


class PodAffinity(SpecModel):
    required_during_scheduling_ignored_during_execution: list[PodAffinityTerm] = Field(
        default_factory=list, max_length=MAX_TERMS, description="Terms that must hold."
    )
    preferred_during_scheduling_ignored_during_execution: list[WeightedPodAffinityTerm] = Field(
        default_factory=list, max_length=MAX_TERMS, description="Terms preferred."
    )


class Affinity(SpecModel):
    node_affinity: NodeAffinity | None = Field(default=None, description="Nodes the workers run on.")
    pod_affinity: PodAffinity | None = Field(default=None, description="Pods the workers run near.")
    pod_anti_affinity: PodAffinity | None = Field(
        default=None, description="Pods the workers run apart from."
    )

    def to_pod(self) -> dict[str, Any]:
        """The core/v1 Affinity of the worker pods (empty lists and maps left out)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_defaults=True)


# --- volume sources ---------------------------------------------------------------------------------------------

# Volume sources that one directory can come from on every node at once (a claim is assumed ReadWriteMany: a
# ReadWriteOnce claim cannot attach to pods on several nodes, which the pods' events say loudly).
SHARED_VOLUME_SOURCES = ("persistentVolumeClaim", "nfs", "csi", "cephfs", "glusterfs", "azureFile")
# Every volume source kind of core/v1 (Kubernetes 1.36's VolumeSource), as written in a pod.
VOLUME_SOURCE_KINDS: Final = (
    "awsElasticBlockStore",
    "azureDisk",
    "azureFile",
    "cephfs",
    "cinder",
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "fc",
    "flexVolume",
    "flocker",
    "gcePersistentDisk",
    "gitRepo",
    "glusterfs",
    "hostPath",
    "image",
    "iscsi",
    "nfs",
    "persistentVolumeClaim",
    "photonPersistentDisk",
    "portworxVolume",
    "projected",
    "quobyte",
    "rbd",
    "scaleIO",
    "secret",
    "storageos",
    "vsphereVolume",
)


def _source_field(kind: str) -> Any:
    return Field(
        default=None,
        alias=kind,
        description=f"core/v1 {kind} volume source.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )


_KindBody = dict[str, Any] | None


class PodVolumeSource(SpecModel):
    """One core/v1 volume source, as it appears in a pod's volume next to its name: exactly one kind. Each
    kind's own fields are passed through as written (the API server checks them when the pod is created; a
    pod it refuses is reported on the job's status and retried).

    hostPath is accepted: it is legal core/v1, and RDMA jobs need /dev/infiniband from the host. A cluster
    that forbids it (multi-tenant clusters do, with Pod Security admission's baseline level or a policy
    engine) refuses the pod at create time, which the job's status and Events then report."""

    aws_elastic_block_store: _KindBody = _source_field("awsElasticBlockStore")
    azure_disk: _KindBody = _source_field("azureDisk")
    azure_file: _KindBody = _source_field("azureFile")
    cephfs: _KindBody = _source_field("cephfs")
    cinder: _KindBody = _source_field("cinder")
    config_map: _KindBody = _source_field("configMap")
    csi: _KindBody = _source_field("csi")
    downward_api: _KindBody = _source_field("downwardAPI")
    empty_dir: _KindBody = _source_field("emptyDir")
    ephemeral: _KindBody = _source_field("ephemeral")
    fc: _KindBody = _source_field("fc")
    flex_volume: _KindBody = _source_field("flexVolume")
    flocker: _KindBody = _source_field("flocker")
    gce_persistent_disk: _KindBody = _source_field("gcePersistentDisk")
    git_repo: _KindBody = _source_field("gitRepo")
    glusterfs: _KindBody = _source_field("glusterfs")
    host_path: _KindBody = _source_field("hostPath")
    image: _KindBody = _source_field("image")
    iscsi: _KindBody = _source_field("iscsi")
    nfs: _KindBody = _source_field("nfs")
    persistent_volume_claim: _KindBody = _source_field("persistentVolumeClaim")
    photon_persistent_disk: _KindBody = _source_field("photonPersistentDisk")
    portworx_volume: _KindBody = _source_field("portworxVolume")
    projected: _KindBody = _source_field("projected")
    quobyte: _KindBody = _source_field("quobyte")
    rbd: _KindBody = _source_field("rbd")
    scale_io: _KindBody = _source_field("scaleIO")
    secret: _KindBody = _source_field("secret")
    storageos: _KindBody = _source_field("storageos")
    vsphere_volume: _KindBody = _source_field("vsphereVolume")

    @model_validator(mode="after")
    def _one_kind(self) -> PodVolumeSource:
        kinds = self.kinds()
        if len(kinds) != 1:
            got = f"{len(kinds)} ({', '.join(kinds)})" if kinds else "none"
            raise ValueError(
                f"a volume has exactly one source kind, got {got}: keep one, e.g. {{nfs: {{server: ..., path: "
                "...}}, or {emptyDir: {}}; split several into volumes of their own"
            )
        return self

    def kinds(self) -> list[str]:
        """The source kinds set (their core/v1 names)."""
        return [
            field.alias or name
            for name, field in type(self).model_fields.items()
            if getattr(self, name) is not None
        ]

    def to_pod(self) -> dict[str, Any]:
        """The source as a pod's volume has it ({kind: {...}})."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
