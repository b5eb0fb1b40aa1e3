"""The CRD's schema follows the API server's rules and documents itself.

The API server refuses a CRD whose schema is not structural, and prunes or rejects what breaks
the finer rules (a default that fails its own schema, a list-map key that may be missing). These
tests catch both before a cluster does, and hold every field to a description, because
``kubectl explain`` is the API's manual. The operator's defaults are checked against the schema's
in ``test_defaults_match_crd.py``.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest
import yaml

from celery_operator.spec import MAX_REPLICAS
from tests.unit.samples import full_spec, minimal_spec

ROOT: Final = Path(__file__).resolve().parents[2]
CRD: Final = ROOT / "crds" / "celeryoperator.dev_celeryclusters.yaml"
SAMPLE: Final = ROOT / "examples" / "local" / "celerycluster.yaml"

Schema = Mapping[str, Any]

SCALAR_TYPES: Final = ("string", "integer", "number", "boolean")
COMBINATORS: Final = ("anyOf", "allOf", "oneOf", "not")
NOT_IN_COMBINATORS: Final = ("type", "description", "default", "additionalProperties", "nullable")
"""Keys a structural schema forbids inside value validations (anyOf, allOf, oneOf, not)."""


@dataclass(frozen=True)
class Node:
    """One schema node, with where it sits."""

    path: str
    schema: Schema
    ancestors: tuple[Schema, ...]
    is_property: bool


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(CRD.read_text())
    return loaded


@pytest.fixture(scope="module")
def version(crd: Mapping[str, Any]) -> dict[str, Any]:
    [only] = crd["spec"]["versions"]
    found: dict[str, Any] = only
    return found


@pytest.fixture(scope="module")
def root(version: Mapping[str, Any]) -> Schema:
    found: Schema = version["schema"]["openAPIV3Schema"]
    return found


@pytest.fixture(scope="module")
def nodes(root: Schema) -> list[Node]:
    return list(walk(root, "", ()))


def walk(schema: Schema, path: str, ancestors: tuple[Schema, ...]) -> Iterator[Node]:
    """Every node of ``schema``: properties, array items and map values, depth first."""
    yield Node(path or "<root>", schema, ancestors, is_property=bool(path) and path[-1] not in "]*")
    below = (*ancestors, schema)
    for name, sub in schema.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}", below)
    if "items" in schema:
        yield from walk(schema["items"], f"{path}[]", below)
    if isinstance(schema.get("additionalProperties"), Mapping):
        yield from walk(schema["additionalProperties"], f"{path}.*", below)


def with_defaults(schema: Schema, value: Any) -> Any:
    """``value`` defaulted the way the API server does it: objects and array items, recursively."""
    if value is None:
        if "default" not in schema:
            return None
        value = copy.deepcopy(schema["default"])
    if isinstance(value, dict):
        for key, sub in schema.get("properties", {}).items():
            defaulted = with_defaults(sub, value.get(key))
            if defaulted is not None:
                value[key] = defaulted
    if isinstance(value, list) and "items" in schema:
        value = [with_defaults(schema["items"], item) for item in value]
    return value


def violations(schema: Schema, value: Any, path: str) -> list[str]:
    """What the API server would reject (or prune) in ``value``; CEL rules are not evaluated."""
    if schema.get("x-kubernetes-int-or-string"):
        if not (isinstance(value, str) or _is_int(value)):
            return [f"{path}: {value!r} is neither an integer nor a string"]
    elif not _has_type(value, schema.get("type")):
        return [f"{path}: {value!r} is not of type {schema.get('type')}"]

    errors: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} is not one of {schema['enum']}")
    if _is_int(value) or isinstance(value, float):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{path}: {value} < minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{path}: {value} > maximum {schema['maximum']}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            errors.append(f"{path}: shorter than {schema['minLength']}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{path}: longer than {schema['maxLength']}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{path}: {value!r} does not match {schema['pattern']}")
    if isinstance(value, list):
        errors += _list_violations(schema, value, path)
    if isinstance(value, dict):
        errors += _object_violations(schema, value, path)
    return errors


def _list_violations(schema: Schema, value: list[Any], path: str) -> list[str]:
    errors: list[str] = []
    if len(value) < schema.get("minItems", 0):
        errors.append(f"{path}: fewer than {schema['minItems']} items")
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        errors.append(f"{path}: more than {schema['maxItems']} items")
    for index, item in enumerate(value):
        errors += violations(schema["items"], item, f"{path}[{index}]")
    list_type = schema.get("x-kubernetes-list-type")
    if list_type == "set" and len({repr(v) for v in value}) != len(value):
        errors.append(f"{path}: duplicate items in a set")
    if list_type == "map":
        keys = [tuple(item.get(k) for k in schema["x-kubernetes-list-map-keys"]) for item in value]
        if len(set(keys)) != len(keys):
            errors.append(f"{path}: duplicate keys in a map list")
    return errors


def _object_violations(schema: Schema, value: dict[str, Any], path: str) -> list[str]:
    errors = [f"{path}.{key}: required" for key in schema.get("required", []) if key not in value]
    known = schema.get("properties", {})
    extra = schema.get("additionalProperties")
    for key, item in value.items():
        if key in known:
            errors += violations(known[key], item, f"{path}.{key}")
        elif isinstance(extra, Mapping):
            errors += violations(extra, item, f"{path}.{key}")
        elif not schema.get("x-kubernetes-preserve-unknown-fields"):
            errors.append(f"{path}.{key}: unknown field, would be pruned")
    return errors


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _has_type(value: Any, type_: str | None) -> bool:
    checks: dict[str | None, bool] = {
        "string": isinstance(value, str),
        "integer": _is_int(value),
        "number": _is_int(value) or isinstance(value, float),
        "boolean": isinstance(value, bool),
        "object": isinstance(value, dict),
        "array": isinstance(value, list),
    }
    return checks.get(type_, False)


def _at(root: Schema, dotted: str) -> Schema:
    node = root
    for part in dotted.strip(".").split("."):
        node = node["items"] if part == "[]" else node["properties"][part]
    return node


# --- the resource ---------------------------------------------------------------------------


def test_the_crd_is_one_document_naming_the_api(crd: Mapping[str, Any]) -> None:
    assert len(list(yaml.safe_load_all(CRD.read_text()))) == 1
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["kind"] == "CustomResourceDefinition"
    assert crd["metadata"]["name"] == "celeryclusters.celeryoperator.dev"
    spec = crd["spec"]
    assert spec["group"] == "celeryoperator.dev"
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": "CeleryCluster",
        "listKind": "CeleryClusterList",
        "plural": "celeryclusters",
        "singular": "celerycluster",
        "shortNames": ["cc"],
        "categories": ["celery"],
    }


def test_one_served_storage_version_with_a_status_subresource(version: Mapping[str, Any]) -> None:
    assert version["name"] == "v1alpha1"
    assert version["served"] is True
    assert version["storage"] is True
    assert version["subresources"] == {"status": {}}


# --- documentation --------------------------------------------------------------------------


def test_every_field_is_described(nodes: list[Node]) -> None:
    undescribed = [
        n.path
        for n in nodes
        if (n.is_property or n.path == "<root>")
        and n.path != ".metadata"
        and not str(n.schema.get("description", "")).strip()
    ]
    assert not undescribed, f"fields without a description: {undescribed}"


def test_metadata_is_left_to_the_api_server(root: Schema) -> None:
    """It refuses a description or any rule here other than on name and generateName."""
    assert root["properties"]["metadata"] == {"type": "object"}


@pytest.mark.parametrize(
    ("path", "words"),
    [
        (".spec.workers[].concurrency", ("-c", "Default 2")),
        (".spec.workers[].queues", ("-Q", "Default [celery]")),
        (".spec.workers[].pool", ("-P", "Default prefork")),
        (".spec.workers[].maxMemoryPerChild", ("KiB", "--max-memory-per-child")),
        (".spec.workers[].softTimeLimitSeconds", ("Seconds", "--soft-time-limit")),
        (".spec.workers[].terminationGracePeriodSeconds", ("Seconds", "Default 60")),
        (".spec.beat.scheduler", ("-S",)),
    ],
)
def test_descriptions_give_the_celery_flag_unit_and_default(
    nodes: list[Node], path: str, words: tuple[str, ...]
) -> None:
    [node] = [n for n in nodes if n.path == path]
    for word in words:
        assert word in node.schema["description"], f"{path}: {word!r} not in its description"


# --- defaults, enums and bounds -------------------------------------------------------------


def test_every_default_validates_against_its_own_schema(nodes: list[Node]) -> None:
    errors = [
        error
        for n in nodes
        if "default" in n.schema
        for error in violations(n.schema, with_defaults(n.schema, None), n.path)
    ]
    assert not errors


def test_every_enum_value_has_its_node_type(nodes: list[Node]) -> None:
    errors = [
        f"{n.path}: {value!r}"
        for n in nodes
        if "enum" in n.schema
        for value in n.schema["enum"]
        if not _has_type(value, n.schema.get("type"))
    ]
    assert not errors


@pytest.mark.parametrize(
    ("low", "high"), [("minimum", "maximum"), ("minLength", "maxLength"), ("minItems", "maxItems")]
)
def test_lower_bounds_are_below_upper_bounds(nodes: list[Node], low: str, high: str) -> None:
    assert not [
        n.path
        for n in nodes
        if low in n.schema and high in n.schema and n.schema[low] > n.schema[high]
    ]


@pytest.mark.parametrize(
    ("make", "path"),
    [
        (minimal_spec, "the minimal sample"),
        (full_spec, "the full sample"),
        (lambda: yaml.safe_load(SAMPLE.read_text())["spec"], str(SAMPLE.relative_to(ROOT))),
    ],
)
def test_samples_are_valid_before_and_after_defaulting(root: Schema, make: Any, path: str) -> None:
    spec_schema = root["properties"]["spec"]
    raw = make()
    assert violations(spec_schema, raw, path) == []
    assert violations(spec_schema, with_defaults(spec_schema, raw), path) == []


def test_the_validator_finds_what_the_api_server_rejects(root: Schema) -> None:
    """The checks above are only as good as ``violations``: it must see these."""
    spec_schema = root["properties"]["spec"]
    bad = minimal_spec()
    bad["workers"][0].update(concurrency=0, queues=["a,b"], pool="fork")
    bad["workers"].append({"name": "default"})
    bad["beat"] = {"persistence": {"size": "lots"}, "surprise": 1}
    found = "\n".join(violations(spec_schema, bad, "spec"))
    for where in (
        "spec.workers[0].concurrency",
        "spec.workers[0].queues[0]",
        "spec.workers[0].pool",
        "spec.workers: duplicate keys",
        "spec.beat.persistence.size",
        "spec.beat.surprise",
    ):
        assert where in found


@pytest.mark.parametrize(
    "path",
    [
        ".spec.workers[].replicas",
        ".spec.workers[].autoscaling.minReplicas",
        ".spec.workers[].autoscaling.maxReplicas",
        ".spec.workers[].autoscaling.brokerUnreadable.fallbackReplicas",
    ],
)
def test_every_replica_count_has_the_operators_bound(nodes: list[Node], path: str) -> None:
    [node] = [n for n in nodes if n.path == path]
    assert node.schema["maximum"] == MAX_REPLICAS


def test_the_validator_finds_replicas_above_the_bound_and_duplicated_steps(root: Schema) -> None:
    spec_schema = root["properties"]["spec"]
    bad = minimal_spec()
    bad["workers"][0]["replicas"] = MAX_REPLICAS + 1
    bad["broker"]["transportOptions"] = {"prioritySteps": [0, 3, 3]}
    found = "\n".join(violations(spec_schema, bad, "spec"))
    assert f"spec.workers[0].replicas: {MAX_REPLICAS + 1} > maximum {MAX_REPLICAS}" in found
    assert "spec.broker.transportOptions.prioritySteps: duplicate items in a set" in found


# --- printer columns ------------------------------------------------------------------------


def test_printer_columns_read_fields_of_their_type(
    version: Mapping[str, Any], root: Schema
) -> None:
    column_types = {"integer": ("integer",), "string": ("string",), "date": ("string",)}
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert list(columns) == [
        "Workers", "Beat", "Backlog", "In-Flight", "Last-Scale", "Scaling", "Status", "Age", "App",
        "Image", "Broker",
    ]  # fmt: skip
    assert columns["Age"]["jsonPath"] == ".metadata.creationTimestamp"
    assert {n for n, c in columns.items() if c.get("priority", 0) == 1} == {
        "Scaling",
        "App",
        "Image",
        "Broker",
    }
    for name, column in columns.items():
        if column["jsonPath"].startswith(".metadata."):
            continue  # served by the API server, not in our schema
        field = _at(root, column["jsonPath"])
        assert field["type"] in column_types[column["type"]], name


# --- structural schema ----------------------------------------------------------------------


def test_every_node_has_a_type_unless_int_or_string_or_preserving(nodes: list[Node]) -> None:
    untyped = [
        n.path
        for n in nodes
        if not n.schema.get("type")
        and not n.schema.get("x-kubernetes-int-or-string")
        and not n.schema.get("x-kubernetes-preserve-unknown-fields")
    ]
    assert not untyped


def test_int_or_string_nodes_are_spelled_as_the_api_server_wants(nodes: list[Node]) -> None:
    for n in nodes:
        if n.schema.get("x-kubernetes-int-or-string"):
            assert "type" not in n.schema, n.path
            assert n.schema.get("anyOf") == [{"type": "integer"}, {"type": "string"}], n.path


def test_value_validations_carry_no_structure(nodes: list[Node]) -> None:
    errors = [
        f"{n.path}.{combinator}: {key}"
        for n in nodes
        for combinator in COMBINATORS
        for branch in _branches(n.schema.get(combinator))
        for key in NOT_IN_COMBINATORS
        if key in branch and not (combinator == "anyOf" and key == "type" and _int_or_string(n))
    ]
    assert not errors


def _branches(value: Any) -> list[Schema]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _int_or_string(node: Node) -> bool:
    return bool(node.schema.get("x-kubernetes-int-or-string"))


def test_preserve_unknown_fields_is_only_ever_true_on_objects(nodes: list[Node]) -> None:
    for n in nodes:
        if "x-kubernetes-preserve-unknown-fields" in n.schema:
            # false is refused ("must be true or undefined"): leaving it out means false
            assert n.schema["x-kubernetes-preserve-unknown-fields"] is True, n.path
            assert n.schema.get("type") == "object", n.path


def test_status_is_a_real_schema(root: Schema) -> None:
    status = root["properties"]["status"]
    assert "x-kubernetes-preserve-unknown-fields" not in status
    assert {"observedGeneration", "phase", "conditions", "pools", "backlog"} <= set(
        status["properties"]
    )


def test_properties_and_additional_properties_never_meet(nodes: list[Node]) -> None:
    assert not [
        n.path for n in nodes if "properties" in n.schema and "additionalProperties" in n.schema
    ]


def test_list_map_keys_are_required_scalars(nodes: list[Node]) -> None:
    for n in nodes:
        if n.schema.get("x-kubernetes-list-type") != "map":
            continue
        items = n.schema["items"]
        assert items.get("type") == "object", n.path
        for key in n.schema["x-kubernetes-list-map-keys"]:
            assert items["properties"][key].get("type") in SCALAR_TYPES, f"{n.path}: {key}"
            assert key in items.get("required", []) or "default" in items["properties"][key], (
                f"{n.path}: map key {key} must be required or defaulted"
            )


def test_set_items_are_scalars(nodes: list[Node]) -> None:
    for n in nodes:
        if n.schema.get("x-kubernetes-list-type") == "set":
            assert n.schema["items"].get("type") in SCALAR_TYPES, n.path


# --- CEL rules ------------------------------------------------------------------------------


def test_cel_rules_have_messages_and_name_existing_fields(nodes: list[Node]) -> None:
    for n in nodes:
        for rule in n.schema.get("x-kubernetes-validations", []):
            assert rule.get("message"), f"{n.path}: {rule['rule']}"
            for field in re.findall(r"self\.(\w+)\b(?!\s*\()", rule["rule"]):  # not methods
                assert field in n.schema["properties"], f"{n.path}: {field}"
            if "fieldPath" in rule:
                node = n.schema
                for part in rule["fieldPath"].lstrip(".").split("."):
                    assert part in node.get("properties", {}), f"{n.path}: {rule['fieldPath']}"
                    node = node["properties"][part]


def test_cel_rules_run_a_bounded_number_of_times(nodes: list[Node]) -> None:
    """The API server refuses rules whose estimated cost is unbounded: every list above is."""
    for n in nodes:
        if n.schema.get("x-kubernetes-validations"):
            unbounded = [a for a in n.ancestors if a.get("type") == "array" and "maxItems" not in a]
            assert not unbounded, n.path


def test_priority_steps_are_a_sorted_set(root: Schema) -> None:
    """kombu bisects over the steps as given and counts a repeated one twice: the API server
    refuses duplicates (a set) and, with the lists library's isSorted(), any other order."""
    steps = _at(root, ".spec.broker.transportOptions.prioritySteps")
    assert steps["x-kubernetes-list-type"] == "set"
    [rule] = steps["x-kubernetes-validations"]
    assert rule["rule"] == "self.isSorted()"
    assert rule["message"] == "prioritySteps must be sorted ascending without duplicates"
    assert steps["default"] == sorted(set(steps["default"]))


def test_soft_time_limit_rule_says_what_to_fix(root: Schema) -> None:
    rules = _at(root, ".spec.workers.[]")["x-kubernetes-validations"]
    [rule] = [r for r in rules if "softTimeLimitSeconds" in r["rule"]]
    assert rule["message"] == "softTimeLimitSeconds must be less than timeLimitSeconds"
    assert rule["fieldPath"] == ".softTimeLimitSeconds"
