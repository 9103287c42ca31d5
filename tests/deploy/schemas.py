"""Offline validation of every rendered object.

Core kinds go to kubernetes-validate, strict (no unknown fields), for the oldest and
the newest Kubernetes version we claim. Custom resources are not in those schemas, so
the kinds the manifests use get a small schema of our own here, written from their
CRDs (prometheus-operator's monitoring.coreos.com/v1, the Kubeflow training
operator's kubeflow.org/v1): the fields we use, their types and formats, and no
unknown fields. A PyTorchJob's pod templates are validated as core PodTemplates.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import kubernetes_validate

KUBERNETES_VERSIONS = ("1.28.0", "1.37.0")

_DURATION = {
    "type": "string",
    "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 253}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": _NAME,
        "namespace": _NAME,
        "labels": _STRING_MAP,
        "annotations": _STRING_MAP,
    },
    "additionalProperties": False,
}
_LABEL_SELECTOR = {
    "type": "object",
    "properties": {
        "matchLabels": _STRING_MAP,
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["key", "operator"],
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
                "additionalProperties": False,
            },
        },
    },
    "additionalProperties": False,
}
_RELABEL_ACTIONS = [
    a
    for pair in (
        ("replace", "Replace"),
        ("keep", "Keep"),
        ("drop", "Drop"),
        ("hashmod", "HashMod"),
        ("labelmap", "LabelMap"),
        ("labeldrop", "LabelDrop"),
        ("labelkeep", "LabelKeep"),
        ("lowercase", "Lowercase"),
        ("uppercase", "Uppercase"),
        ("keepequal", "KeepEqual"),
        ("dropequal", "DropEqual"),
    )
    for a in pair
]
_RELABEL = {
    "type": "object",
    "properties": {
        "action": {"enum": _RELABEL_ACTIONS},
        "sourceLabels": {"type": "array", "items": {"type": "string"}},
        "separator": {"type": "string"},
        "targetLabel": {"type": "string"},
        "regex": {"type": "string"},
        "modulus": {"type": "integer"},
        "replacement": {"type": "string"},
    },
    "additionalProperties": False,
}
_ENDPOINT = {
    "type": "object",
    "properties": {
        "port": {"type": "string"},
        "targetPort": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
        "path": {"type": "string", "pattern": "^/"},
        "scheme": {"enum": ["http", "https"]},
        "interval": _DURATION,
        "scrapeTimeout": _DURATION,
        "honorLabels": {"type": "boolean"},
        "honorTimestamps": {"type": "boolean"},
        "authorization": {
            "type": "object",
            "required": ["credentials"],
            "properties": {
                "type": {"type": "string"},
                "credentials": {
                    "type": "object",
                    "required": ["key"],
                    "properties": {
                        "name": {"type": "string"},
                        "key": {"type": "string"},
                        "optional": {"type": "boolean"},
                    },
                    "additionalProperties": False,
                },
            },
            "additionalProperties": False,
        },
        "relabelings": {"type": "array", "items": _RELABEL},
        "metricRelabelings": {"type": "array", "items": _RELABEL},
    },
    "additionalProperties": False,
}
SERVICE_MONITOR = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "properties": {
                "jobLabel": {"type": "string"},
                "selector": _LABEL_SELECTOR,
                "namespaceSelector": {
                    "type": "object",
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                    "additionalProperties": False,
                },
                "endpoints": {"type": "array", "minItems": 1, "items": _ENDPOINT},
            },
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}
_RULE = {
    "type": "object",
    "required": ["expr"],
    "properties": {
        "record": {"type": "string", "pattern": r"^[a-zA-Z_:][a-zA-Z0-9_:]*$"},
        "alert": {"type": "string", "minLength": 1},
        "expr": {"anyOf": [{"type": "integer"}, {"type": "string", "minLength": 1}]},
        "for": _DURATION,
        "keep_firing_for": _DURATION,
        "labels": _STRING_MAP,
        "annotations": _STRING_MAP,
    },
    "oneOf": [{"required": ["record"]}, {"required": ["alert"]}],
    "additionalProperties": False,
}
PROMETHEUS_RULE = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "required": ["groups"],
            "properties": {
                "groups": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "rules"],
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "interval": _DURATION,
                            "limit": {"type": "integer"},
                            "query_offset": _DURATION,
                            "rules": {"type": "array", "items": _RULE},
                        },
                        "additionalProperties": False,
                    },
                },
            },
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}
_REPLICA_SPEC = {
    "type": "object",
    "required": ["template"],
    "properties": {
        "replicas": {"type": "integer", "minimum": 0},
        "restartPolicy": {"enum": ["Always", "OnFailure", "Never", "ExitCode"]},
        "template": {"type": "object"},  # validated as a core PodTemplate
    },
    "additionalProperties": False,
}
PYTORCH_JOB = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "kubeflow.org/v1"},
        "kind": {"const": "PyTorchJob"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "required": ["pytorchReplicaSpecs"],
            "properties": {
                "pytorchReplicaSpecs": {
                    "type": "object",
                    "minProperties": 1,
                    "propertyNames": {"enum": ["Master", "Worker"]},
                    "additionalProperties": _REPLICA_SPEC,
                },
                "nprocPerNode": {"type": "string"},
                "runPolicy": {
                    "type": "object",
                    "properties": {
                        "cleanPodPolicy": {"enum": ["All", "Running", "None"]},
                        "ttlSecondsAfterFinished": {"type": "integer"},
                        "activeDeadlineSeconds": {"type": "integer"},
                        "backoffLimit": {"type": "integer"},
                        "suspend": {"type": "boolean"},
                        "managedBy": {"type": "string"},
                        "schedulingPolicy": {"type": "object"},
                    },
                    "additionalProperties": False,
                },
                "elasticPolicy": {"type": "object"},
            },
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}
CUSTOM = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR,
    ("monitoring.coreos.com/v1", "PrometheusRule"): PROMETHEUS_RULE,
    ("kubeflow.org/v1", "PyTorchJob"): PYTORCH_JOB,
}


class InvalidObject(AssertionError):
    pass


def _where(obj: dict[str, Any]) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


# Objects found valid already: the variants share most of theirs, and each check
# reloads the schema definitions.
_VALID: set[str] = set()


def validate_core(obj: dict[str, Any]) -> None:
    key = json.dumps(obj, sort_keys=True)
    if key in _VALID:
        return
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(p) for p in error.path)
            raise InvalidObject(
                f"{_where(obj)} is invalid for Kubernetes {version} at {path}: {error.message}"
            ) from None
        except kubernetes_validate.SchemaNotFoundError as error:
            raise InvalidObject(f"{_where(obj)}: {error.message}") from None
    _VALID.add(key)


def validate(obj: dict[str, Any]) -> None:
    """Raise InvalidObject, saying where, unless obj is valid."""
    schema = CUSTOM.get((obj.get("apiVersion"), obj.get("kind")))
    if schema is None:
        validate_core(obj)
        return
    try:
        jsonschema.validate(obj, schema)
    except jsonschema.ValidationError as error:
        path = ".".join(str(p) for p in error.absolute_path)
        raise InvalidObject(f"{_where(obj)} is invalid at {path}: {error.message}") from None
    if obj["kind"] == "PyTorchJob":
        for role, spec in obj["spec"]["pytorchReplicaSpecs"].items():
            validate_core(
                {
                    "apiVersion": "v1",
                    "kind": "PodTemplate",
                    "metadata": {"name": f"{obj['metadata']['name']}-{role.lower()}"},
                    "template": spec["template"],
                }
            )
