"""The FineTuneJob CustomResourceDefinition, generated from the pydantic models.

The spec models (`kubetune.spec.models`) and the status models (`kubetune.spec.status`) are the one
source of truth; this module turns their JSON schema into a *structural* OpenAPI v3 schema the API server
accepts (refs inlined, `anyOf: [X, null]` folded, exclusive bounds in OpenAPI 3.0 form, defaults from
default factories so nested defaults apply server-side) and adds what a JSON schema cannot say:

* CEL rules (`x-kubernetes-validations`) mirroring the models' cross-field validators, so `kubectl apply`
  refuses such specs with the same advice `kubetune validate` gives;
* a transition rule that locks the spec while the job is active (only `suspend` and
  `ttlSecondsAfterFinished` may change), because a running gang cannot change shape under its feet;
* the status subresource and the printer columns of `kubectl get finetunejobs`.

`kubetune crd` prints or writes the result; `manifests/crd/finetunejobs.kubetune.io.yaml` is its committed
output and a test fails when the two differ.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml
from pydantic import BaseModel, TypeAdapter

from kubetune.spec.adapters import ALL_LINEAR, AdapterSpec
from kubetune.spec.kube_names import (
    DNS_SUBDOMAIN_MAX,
    ENV_NAME_PATTERN,
    EXTENDED_RESOURCE_DOMAIN_MAX,
    QUALIFIED_NAME_MAX,
    QUALIFIED_NAME_PATTERN,
)
from kubetune.spec.models import (
    API_GROUP,
    API_VERSION,
    JOB_NAME_PATTERN,
    KIND,
    MAX_JOB_NAME_LENGTH,
    PLURAL,
    QUEUE_LABEL,
    RESERVED_KEY_PREFIXES,
    RESERVED_LABEL_KEYS,
    RESERVED_MOUNT_PATHS,
    RESERVED_VOLUME_NAMES,
    SHARED_VOLUME_SOURCES,
    SHORT_NAMES,
    SINGULAR,
    DatasetSpec,
    DeepSpeedSpec,
    FineTuneJobSpec,
    KubernetesSpec,
    PodGroupPolicy,
    PodOverlay,
    ResourceSpec,
    TrainingSpec,
)
from kubetune.spec.pod_fields import (
    INTEGER_VALUE_PATTERN,
    VOLUME_SOURCE_KINDS,
    LabelSelector,
    LabelSelectorRequirement,
    NodeSelectorRequirement,
    PodAffinityTerm,
    PodVolumeSource,
    Toleration,
)
from kubetune.spec.status import ACTIVE_PHASES, FineTuneJobStatus

CRD_NAME = f"{PLURAL}.{API_GROUP}"
CRD_FILE = f"{CRD_NAME}.yaml"

# Keys of a JSON schema that survive into the structural schema (everything else, e.g. title, is dropped).
_KEPT_KEYS = {
    "type",
    "description",
    "default",
    "enum",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "maxProperties",
    "format",
    "nullable",
    "x-kubernetes-preserve-unknown-fields",
    # (a rule on one string field, which a pattern cannot say: kubetune.spec.pod_fields.PREFIX_RULE)
    "x-kubernetes-validations",
}


def _rule(
    rule: str, message: str, field_path: str | None = None, reason: str | None = None
) -> dict[str, str]:
    entry = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    if reason:
        entry["reason"] = reason
    return entry


# (Optional lists and maps are guarded with has(): the API server does not fill in every empty default.)
# CEL rules mirroring each model's @model_validator (keep them side by side with the pydantic versions;
# tests/operator/test_crd.py checks both refuse the same documents). Values are checked after the API
# server applied defaults, so defaulted fields are always present.


def _covers_output(mount_path: str) -> str:
    """CEL: self.output.path is the folder `mount_path` (a CEL expression) or lies under it (as `covers`)."""
    base = f"({mount_path}.endsWith('/') ? {mount_path} : {mount_path} + '/')"
    return f"(self.output.path == {mount_path} || self.output.path.startsWith({base}))"


_RESERVED_VOLUMES = "[" + ", ".join(f"'{name}'" for name in RESERVED_VOLUME_NAMES) + "]"
_RESERVED_PATHS = "[" + ", ".join(f"'{path}'" for path in RESERVED_MOUNT_PATHS) + "]"


# A label (or, lowercased, annotation) key: Kubernetes' IsQualifiedName (the prefix before '/' at most 253).
def _qualified_key(key: str) -> str:
    """CEL: `key` (a CEL expression) is a qualified name (a raw string: the pattern's backslashes stay)."""
    return (
        f"{key}.matches(r'{QUALIFIED_NAME_PATTERN}') && "
        f"(!{key}.contains('/') || {key}.indexOf('/') <= {DNS_SUBDOMAIN_MAX})"
    )


_RESERVED_MESSAGE = (
    "keys "
    + " and ".join(f"{prefix}..." for prefix in RESERVED_KEY_PREFIXES)
    + ", "
    + ", ".join(RESERVED_LABEL_KEYS)
    + " are kubetune's own or Kueue's (the operator sets them on the workers): pick other keys; a job's queue "
    f"goes in the FineTuneJob's metadata.labels[{QUEUE_LABEL}]"
)


def _reserved(key: str) -> str:
    """CEL: the label key `key` (a CEL expression) is one of RESERVED_LABEL_KEYS or in a reserved domain."""
    keys = "[" + ", ".join(f"'{k}'" for k in RESERVED_LABEL_KEYS) + "]"
    prefixes = " || ".join(f"{key}.startsWith('{prefix}')" for prefix in RESERVED_KEY_PREFIXES)
    return f"{key} in {keys} || {prefixes}"


def _extended_resource(name: str) -> str:
    """CEL: `name` (a CEL expression) names an extended resource (as kube_names.extended_resource_name_problem)."""
    return (
        f"{name}.contains('/') && !{name}.startsWith('requests.') && !{name}.contains('kubernetes.io/') && "
        f"{_qualified_key(name)} && {name}.indexOf('/') <= {EXTENDED_RESOURCE_DOMAIN_MAX}"
    )


_EXTENDED_RESOURCE_MESSAGE = (
    "must be a device plugin's extended resource: domain/name (a label key, the domain at most "
    f"{EXTENDED_RESOURCE_DOMAIN_MAX} characters), not in kubernetes.io/ nor starting with requests., e.g. "
    "nvidia.com/gpu"
)


def _values_count(operators: str) -> str:
    """CEL: a selector requirement has as many values as its operator takes (as pod_fields._values_problem)."""
    values = "(has(self.values) ? size(self.values) : 0)"
    rule = f"self.operator in ['In', 'NotIn'] ? {values} > 0 : "
    if "Gt" in operators:
        rule += (
            f"self.operator in ['Gt', 'Lt'] ? ({values} == 1 && self.values[0].matches('{INTEGER_VALUE_PATTERN}'))"
            " : "
        )
    return rule + f"{values} == 0"


_ONE_VOLUME_KIND = " + ".join(f"(has(self.{kind}) ? 1 : 0)" for kind in VOLUME_SOURCE_KINDS) + " == 1"

CEL_RULES: dict[type[BaseModel], list[dict[str, str]]] = {
    DatasetSpec: [
        _rule(
            "!(has(self.messagesField) && has(self.promptField))",
            "dataset.messagesField and dataset.promptField are both set: a dataset is either conversations or "
            "prompt/completion pairs; unset one",
            field_path=".messagesField",
        ),
        _rule(
            "!has(self.chatTemplate) || has(self.messagesField)",
            "dataset.chatTemplate is set but dataset.messagesField is unset: the template renders conversations; "
            "set messagesField to the column holding them, or unset chatTemplate",
            field_path=".chatTemplate",
        ),
        _rule(
            "has(self.promptField) == has(self.completionField)",
            "prompt/completion data needs both dataset.promptField and dataset.completionField (or neither, to "
            "train on textFields)",
            field_path=".promptField",
        ),
        _rule(
            "!(has(self.name) && has(self.files))",
            "set either dataset.name (a hub dataset) or dataset.files (local files), not both",
        ),
        _rule(
            "has(self.name) || has(self.files)",
            "set dataset.name (a hub dataset such as glue) or dataset.files.train (a local file)",
        ),
    ],
    AdapterSpec: [
        _rule(
            f"!has(self.targetModules) || !('{ALL_LINEAR}' in self.targetModules) || size(self.targetModules) == 1",
            f"adapter.targetModules: '{ALL_LINEAR}' already means every linear layer; use [{ALL_LINEAR}] alone or "
            "list the layers",
            field_path=".targetModules",
        ),
    ],
    TrainingSpec: [
        _rule(
            "self.evalStrategy != 'steps' || has(self.evalSteps)",
            "training.evalStrategy is 'steps' but training.evalSteps is unset: set evalSteps: 100",
            field_path=".evalSteps",
        ),
    ],
    DeepSpeedSpec: [
        _rule(
            "self.offloadOptimizer == 'none' || self.zeroStage != 0",
            "deepspeed.offloadOptimizer needs zeroStage 1, 2 or 3 (0 means DeepSpeed off): "
            "set zeroStage, or offloadOptimizer: none",
            field_path=".offloadOptimizer",
        ),
        _rule(
            "self.offloadParameters == 'none' || self.zeroStage == 3",
            "deepspeed.offloadParameters needs zeroStage 3: set zeroStage: 3, or offloadParameters: none",
            field_path=".offloadParameters",
        ),
        _rule(
            "(self.offloadOptimizer != 'nvme' && self.offloadParameters != 'nvme')"
            " || (has(self.nvmePath) && self.nvmePath != '')",
            "nvme offload needs deepspeed.nvmePath: set it to a fast local folder",
            field_path=".nvmePath",
        ),
    ],
    PodOverlay: [
        _rule(
            "!has(self.volumes) || self.volumes.all(v, !(v.name in " + _RESERVED_VOLUMES + "))",
            "kubernetes.podOverlay.volumes: "
            + _RESERVED_VOLUMES
            + " are kubetune's own volume names: pick others",
            field_path=".volumes",
        ),
        _rule(
            "!has(self.volumeMounts) || self.volumeMounts.all(m, has(self.volumes) && "
            "self.volumes.exists(v, v.name == m.name))",
            "kubernetes.podOverlay.volumeMounts must name volumes of podOverlay.volumes",
            field_path=".volumeMounts",
        ),
        _rule(
            "!has(self.volumeMounts) || self.volumeMounts.all(m, !(m.mountPath in " + _RESERVED_PATHS + "))",
            "kubernetes.podOverlay.volumeMounts: " + _RESERVED_PATHS + " are kubetune's own mount paths",
            field_path=".volumeMounts",
        ),
        _rule(
            "!has(self.extraResources) || self.extraResources.all(k, k.contains('/'))",
            "kubernetes.podOverlay.extraResources must be extended resources (domain/name): set cpu and "
            "memory in kubernetes.resources",
            field_path=".extraResources",
        ),
        _rule(
            "!has(self.extraResources) || self.extraResources.all(k, !k.contains('/') || "
            + _extended_resource("k")
            + ")",
            f"kubernetes.podOverlay.extraResources: every name {_EXTENDED_RESOURCE_MESSAGE}",
            field_path=".extraResources",
        ),
    ],
    ResourceSpec: [
        _rule(
            _extended_resource("self.gpuResourceName"),
            f"kubernetes.resources.gpuResourceName {_EXTENDED_RESOURCE_MESSAGE}",
            field_path=".gpuResourceName",
        ),
    ],
    Toleration: [
        _rule(
            "(has(self.key) && self.key != '') || (has(self.operator) && self.operator == 'Exists')",
            "a toleration without a key must have operator: Exists (it then tolerates every taint): set key, or "
            "operator: Exists",
            field_path=".operator",
        ),
        _rule(
            "!has(self.operator) || self.operator != 'Exists' || !has(self.value) || self.value == ''",
            "operator Exists matches every value: remove value, or use operator: Equal",
            field_path=".value",
        ),
        _rule(
            "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
            "tolerationSeconds applies to NoExecute taints only: set effect: NoExecute, or remove "
            "tolerationSeconds",
            field_path=".effect",
        ),
    ],
    LabelSelectorRequirement: [
        _rule(
            _values_count("In NotIn Exists DoesNotExist"),
            "operators In and NotIn need at least one value; Exists and DoesNotExist take none",
            field_path=".values",
        ),
    ],
    NodeSelectorRequirement: [
        _rule(
            _values_count("In NotIn Exists DoesNotExist Gt Lt"),
            "operators In and NotIn need at least one value; Gt and Lt exactly one, an integer (e.g. '8'); "
            "Exists and DoesNotExist none",
            field_path=".values",
        ),
    ],
    LabelSelector: [
        _rule(
            f"!has(self.matchLabels) || self.matchLabels.all(k, {_qualified_key('k')})",
            "matchLabels: every key must be a label key: [prefix/]name, the prefix a DNS subdomain, the name at "
            f"most {QUALIFIED_NAME_MAX} letters, digits, '-', '_' and '.'",
            field_path=".matchLabels",
        ),
    ],
    PodAffinityTerm: [
        _rule(
            "has(self.labelSelector) || ((!has(self.matchLabelKeys) || size(self.matchLabelKeys) == 0) && "
            "(!has(self.mismatchLabelKeys) || size(self.mismatchLabelKeys) == 0))",
            "matchLabelKeys and mismatchLabelKeys refine labelSelector, which is unset: set labelSelector, or "
            "remove them",
            field_path=".labelSelector",
        ),
        _rule(
            "!has(self.matchLabelKeys) || !has(self.mismatchLabelKeys) || "
            "self.matchLabelKeys.all(k, !(k in self.mismatchLabelKeys))",
            "a key is in both matchLabelKeys and mismatchLabelKeys: keep each key in one of them",
            field_path=".mismatchLabelKeys",
        ),
    ],
    PodVolumeSource: [
        _rule(
            _ONE_VOLUME_KIND,
            "a volume has exactly one source kind (e.g. {nfs: {server: ..., path: ...}} or {emptyDir: {}}): keep "
            "one; split several into volumes of their own",
        ),
    ],
    PodGroupPolicy: [
        _rule(
            "has(self.coscheduling)",
            "kubernetes.podGroupPolicy names no gang scheduler: set podGroupPolicy.coscheduling ({} for its "
            "defaults) or remove podGroupPolicy",
            field_path=".coscheduling",
        ),
    ],
    KubernetesSpec: [
        _rule(
            "!has(self.podGroupPolicy) || !has(self.podGroupPolicy.coscheduling) || !has(self.schedulerName) || "
            "self.schedulerName != 'volcano'",
            "kubernetes.podGroupPolicy.coscheduling makes a scheduling.x-k8s.io PodGroup, which Volcano does not "
            "read: use a scheduler running the coscheduling plugin in kubernetes.schedulerName, or remove "
            "podGroupPolicy",
            field_path=".podGroupPolicy",
        ),
        _rule(
            f"!has(self.labels) || self.labels.all(k, {_qualified_key('k')})",
            f"kubernetes.labels: every key must be a label key: [prefix/]name, the prefix a DNS subdomain of at "
            f"most {DNS_SUBDOMAIN_MAX} characters, the name at most {QUALIFIED_NAME_MAX} letters, digits, '-', '_' "
            "and '.', starting and ending with a letter or digit",
            field_path=".labels",
        ),
        _rule(
            f"!has(self.labels) || self.labels.all(k, !({_reserved('k')}))",
            f"kubernetes.labels: {_RESERVED_MESSAGE}",
            field_path=".labels",
        ),
        _rule(
            f"!has(self.nodeSelector) || self.nodeSelector.all(k, {_qualified_key('k')})",
            "kubernetes.nodeSelector: every key must be a label key: [prefix/]name, the prefix a DNS subdomain, "
            f"the name at most {QUALIFIED_NAME_MAX} letters, digits, '-', '_' and '.'",
            field_path=".nodeSelector",
        ),
        _rule(
            f"!has(self.annotations) || self.annotations.all(k, {_qualified_key('k.lowerAscii()')})",
            "kubernetes.annotations: every key must be an annotation key: ASCII, [prefix/]name, the prefix a DNS "
            f"subdomain (any case), the name at most {QUALIFIED_NAME_MAX} letters, digits, '-', '_' and '.'",
            field_path=".annotations",
        ),
        _rule(
            f"!has(self.annotations) || self.annotations.all(k, !({_reserved('k.lowerAscii()')}))",
            f"kubernetes.annotations: {_RESERVED_MESSAGE}",
            field_path=".annotations",
        ),
        _rule(
            f"!has(self.env) || self.env.all(k, k.matches(r'{ENV_NAME_PATTERN}'))",
            "kubernetes.env: variable names must be printable ASCII characters other than '='",
            field_path=".env",
        ),
        _rule(
            f"!has(self.secretEnv) || self.secretEnv.all(k, k.matches(r'{ENV_NAME_PATTERN}'))",
            "kubernetes.secretEnv: variable names must be printable ASCII characters other than '='",
            field_path=".secretEnv",
        ),
    ],
    FineTuneJobSpec: [
        _rule(
            "self.model.task != 'causal-lm' || self.training.metrics.all(m, m == 'perplexity')",
            "training.metrics do not apply to task causal-lm: use perplexity",
            field_path=".training.metrics",
        ),
        _rule(
            "self.model.task == 'causal-lm' || self.training.metrics.all(m, m != 'perplexity')",
            "training.metrics do not apply to task sequence-classification: use accuracy, f1, precision, recall",
            field_path=".training.metrics",
        ),
        _rule(
            # (a nullable field set to null is absent to CEL: has() is false)
            "self.model.task != 'sequence-classification' || has(self.dataset.labelField)",
            "model.task is sequence-classification but dataset.labelField is unset: name the column that "
            "holds the class, e.g. labelField: label",
            field_path=".dataset.labelField",
        ),
        _rule(
            "self.model.task == 'causal-lm' || !has(self.dataset.packing) || !self.dataset.packing",
            "dataset.packing applies to causal-lm only: set packing: false",
            field_path=".dataset.packing",
        ),
        _rule(
            "self.model.task == 'causal-lm' || !has(self.dataset.promptField)",
            "dataset.promptField and completionField apply to causal-lm only: unset them",
            field_path=".dataset.promptField",
        ),
        _rule(
            "self.model.task == 'causal-lm' || !has(self.dataset.messagesField)",
            "dataset.messagesField applies to causal-lm only (conversations): unset it",
            field_path=".dataset.messagesField",
        ),
        _rule(
            "self.model.task == 'causal-lm' || !has(self.adapter)",
            "adapter is set but LoRA adapters are supported for causal-lm only: set model.task: causal-lm or "
            "remove spec.adapter",
            field_path=".adapter",
        ),
        _rule(
            "!has(self.adapter) || !has(self.adapter.qlora) || self.distribution.deepspeed.zeroStage != 3",
            "adapter.qlora cannot run with distribution.deepspeed.zeroStage 3 (a 4-bit base is not partitioned by "
            "ZeRO-3 here): use zeroStage 0 (DDP) or 2",
            field_path=".adapter.qlora",
        ),
        # (kubetune validate and `kubectl apply` only: `kubetune run` reads the token from the environment)
        _rule(
            "!has(self.output.hub) || has(self.output.hub.tokenSecret) || "
            "(has(self.kubernetes) && has(self.kubernetes.hfTokenSecret))",
            "output.hub is set but no Secret holds a token for the push: set output.hub.tokenSecret: {name: "
            "<secret>, key: <key>} (a token with write access), or kubernetes.hfTokenSecret",
            field_path=".output.hub.tokenSecret",
        ),
        # (kubetune validate and `kubectl apply` only: `kubetune run`'s nodes share one disk; see cluster_problems)
        _rule(
            "self.distribution.nodes <= 1 || (has(self.output.ephemeral) && self.output.ephemeral) || "
            "(has(self.output.objectStorage) && (!has(self.output.objectStorage.checkpoints) || "
            "self.output.objectStorage.checkpoints)) || "
            "(has(self.kubernetes) && has(self.kubernetes.outputVolume) && "
            "has(self.kubernetes.outputVolume.claimName) && self.kubernetes.outputVolume.claimName != '' && "
            + _covers_output("self.kubernetes.outputVolume.mountPath")
            + ") || (has(self.kubernetes) && has(self.kubernetes.podOverlay) && has(self.kubernetes.podOverlay.volumeMounts) && "
            "has(self.kubernetes.podOverlay.volumes) && self.kubernetes.podOverlay.volumeMounts.exists(m, "
            + _covers_output("m.mountPath")
            + " && self.kubernetes.podOverlay.volumes.exists(v, v.name == m.name && ("
            + " || ".join(f"has(v.source.{kind})" for kind in SHARED_VOLUME_SOURCES)
            + "))))",
            "output.path is on no shared volume and the job has several nodes: each node would keep its own part "
            "of every checkpoint on its pod's emptyDir, and the model would be lost with the pods. Set "
            "kubernetes.outputVolume.claimName (a ReadWriteMany claim mounted at output.path), or mount a shared "
            "volume at output.path with kubernetes.podOverlay, or write to object storage "
            "(output.objectStorage.uri: s3://<bucket>/<prefix>), or set output.ephemeral: true to accept it",
            field_path=".output.path",
        ),
    ],
}

_ACTIVE = "[" + ", ".join(f"'{phase}'" for phase in sorted(ACTIVE_PHASES)) + "]"
_LOCKED_SPEC_BLOCKS = (
    "model",
    "dataset",
    "training",
    "distribution",
    "checkpointing",
    "output",
    "kubernetes",
)
_LOCKED_RUN_POLICY = ("backoffLimit", "schedulingTimeoutSeconds", "reportProgress")
_LOCKED_OPTIONAL_RUN_POLICY = ("activeDeadlineSeconds",)


def _unchanged_spec_expression() -> str:
    parts = [f"self.spec.{block} == oldSelf.spec.{block}" for block in _LOCKED_SPEC_BLOCKS]
    parts += [f"self.spec.runPolicy.{key} == oldSelf.spec.runPolicy.{key}" for key in _LOCKED_RUN_POLICY]
    for key in _LOCKED_OPTIONAL_RUN_POLICY:
        new, old = f"self.spec.runPolicy.{key}", f"oldSelf.spec.runPolicy.{key}"
        parts.append(f"has({new}) == has({old}) && (!has({new}) || {new} == {old})")
    return " && ".join(f"({part})" for part in parts)


ROOT_RULES: list[dict[str, str]] = [
    _rule(
        f"self.metadata.name.size() <= {MAX_JOB_NAME_LENGTH} && self.metadata.name.matches('{JOB_NAME_PATTERN}')",
        f"metadata.name must be a DNS label (lowercase letters, digits and '-') that starts with a letter, at "
        f"most {MAX_JOB_NAME_LENGTH} characters: it names the headless Service and the worker hostnames "
        "<name>-worker-<index>",
        reason="FieldValueInvalid",
    ),
    {
        "rule": (
            "!has(oldSelf.status) || !has(oldSelf.status.phase) || "
            f"!(oldSelf.status.phase in {_ACTIVE}) || ({_unchanged_spec_expression()})"
        ),
        "messageExpression": (
            "'spec cannot change while the job is ' + oldSelf.status.phase + "
            "': only spec.suspend and spec.runPolicy.ttlSecondsAfterFinished may; "
            "suspend the job first (spec.suspend: true), or delete it and apply a new one'"
        ),
        "fieldPath": ".spec",
        "reason": "FieldValueForbidden",
    },
]

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Job phase."},
    {"name": "Model", "type": "string", "jsonPath": ".spec.model.name", "description": "Model fine-tuned."},
    {"name": "Nodes", "type": "string", "jsonPath": ".status.workers.summary", "description": "ready/total"},
    {
        "name": "Progress",
        "type": "string",
        "jsonPath": ".status.progress.summary",
        "description": "step/total (percent)",
    },
    {
        "name": "Metric",
        "type": "string",
        "jsonPath": ".status.metrics.primary",
        "description": "Primary eval metric.",
    },
    {"name": "Restarts", "type": "integer", "jsonPath": ".status.restarts", "description": "Gang restarts."},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {
        "name": "Message",
        "type": "string",
        "jsonPath": ".status.message",
        "priority": 1,
        "description": "What the job is doing or why it failed.",
    },
]


class SchemaError(ValueError):
    """A model uses a type the structural-schema converter does not know how to express."""


def _model_classes(root: type[BaseModel]) -> dict[str, type[BaseModel]]:
    """Every pydantic model reachable from `root`, by class name (the keys of pydantic's $defs)."""
    found: dict[str, type[BaseModel]] = {}

    def visit(annotation: Any) -> None:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if annotation.__name__ in found:
                return
            found[annotation.__name__] = annotation
            for field in annotation.model_fields.values():
                visit(field.annotation)
        for arg in getattr(annotation, "__args__", ()) or ():
            visit(arg)

    visit(root)
    return found


def _factory_default(model: type[BaseModel], alias: str) -> tuple[bool, Any]:
    """(has_default, value) for a field filled by a default factory: the nested model with its defaults
    written out (the API server validates a default against CEL rules before filling nested defaults), the
    factory's value for non-empty lists/maps."""
    for name, field in model.model_fields.items():
        if (field.alias or name) != alias or field.default_factory is None:
            continue
        value = field.default_factory()  # type: ignore[call-arg]
        if isinstance(value, BaseModel):
            return True, value.model_dump(mode="json", by_alias=True, exclude_none=True)
        if value:
            return True, TypeAdapter(type(value)).dump_python(value, mode="json")
        return False, None
    return False, None


class _Converter:
    def __init__(self, root: type[BaseModel]) -> None:
        raw = root.model_json_schema(by_alias=True, mode="validation")
        self.defs: dict[str, Any] = raw.pop("$defs", {})
        self.root_schema = raw
        self.classes = _model_classes(root)
        self.root_name = root.__name__

    def convert_root(self) -> dict[str, Any]:
        return self._convert(self.root_schema, model_name=self.root_name)

    def _convert(self, node: dict[str, Any], model_name: str | None = None) -> dict[str, Any]:
        node = dict(node)
        if "$ref" in node:
            name = node.pop("$ref").split("/")[-1]
            target = self._convert(self.defs[name], model_name=name)
            target.update(self._convert_siblings(node))
            return target
        if "anyOf" in node:
            options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
            if len(options) != 1:
                raise SchemaError(f"cannot express a union of {len(options)} types: {options}")
            inner = self._convert(options[0])
            siblings = self._convert_siblings(node)
            inner.update(siblings)
            if siblings.get("default") is not None:
                # null means something here ("disable"), distinct from the default: keep it.
                inner["nullable"] = True
            return inner
        if "const" in node:
            value = node.pop("const")
            node.setdefault("enum", [value])
            node.setdefault("type", "string" if isinstance(value, str) else "integer")
        out = self._convert_siblings(node)
        kind = node.get("type")
        if kind == "object":
            out.update(self._convert_object(node, model_name))
        elif kind == "array" and "items" in node:
            out["items"] = self._convert(node["items"])
        return out

    def _convert_siblings(self, node: dict[str, Any]) -> dict[str, Any]:
        out = {k: copy.deepcopy(v) for k, v in node.items() if k in _KEPT_KEYS}
        # JSON Schema 2020 writes exclusive bounds as numbers; OpenAPI 3.0 as a flag on minimum/maximum.
        for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
            if isinstance(out.get(exclusive), int | float) and not isinstance(out[exclusive], bool):
                out[bound] = out.pop(exclusive)
                out[exclusive] = True
        if "default" in out and out["default"] is None:
            del out["default"]
        return out

    def _convert_object(self, node: dict[str, Any], model_name: str | None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        model = self.classes.get(model_name or "")
        properties = node.get("properties")
        if properties:
            out["properties"] = {}
            for key, value in properties.items():
                schema = self._convert(value)
                if model is not None and "default" not in schema:
                    has_default, default = _factory_default(model, key)
                    if has_default:
                        schema["default"] = default
                out["properties"][key] = schema
            if node.get("required"):
                out["required"] = list(node["required"])
        additional = node.get("additionalProperties")
        if additional is True or (additional is None and not properties):
            out["x-kubernetes-preserve-unknown-fields"] = True
        elif isinstance(additional, dict):
            out["additionalProperties"] = self._convert(additional)
        if model is not None and model in CEL_RULES:
            out["x-kubernetes-validations"] = copy.deepcopy(CEL_RULES[model])
        return out


def structural_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of a pydantic model. Raises SchemaError for unsupported types."""
    return _Converter(model).convert_root()


def build_crd() -> dict[str, Any]:
    """The FineTuneJob CustomResourceDefinition as a dict (apiextensions.k8s.io/v1)."""
    spec_schema = structural_schema(FineTuneJobSpec)
    spec_schema["description"] = "What to fine-tune, on what data, how, and where it runs."
    status_schema = structural_schema(FineTuneJobStatus)
    status_schema["description"] = "Written by the operator (and rank 0's progress reporter)."
    root: dict[str, Any] = {
        "type": "object",
        "description": (
            "A FineTuneJob fine-tunes a Hugging Face model on one or more GPU nodes; the kubetune operator "
            "runs one worker pod per node and reports progress and metrics in the status."
        ),
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
        "x-kubernetes-validations": copy.deepcopy(ROOT_RULES),
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {"app.kubernetes.io/name": "kubetune", "app.kubernetes.io/part-of": "kubetune"},
        },
        "spec": {
            "group": API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": ["kubetune"],
            },
            "versions": [
                {
                    "name": API_VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": copy.deepcopy(PRINTER_COLUMNS),
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


HEADER = "# Generated by `kubetune crd` from kubetune.spec.models and kubetune.spec.status: do not edit.\n"


def render_crd() -> str:
    """The CRD as the YAML text committed under manifests/crd/ (stable key order, a header comment)."""
    return HEADER + yaml.safe_dump(build_crd(), sort_keys=False, width=110, allow_unicode=True)
