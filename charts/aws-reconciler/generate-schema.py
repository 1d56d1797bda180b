#!/usr/bin/env python3
"""Generate the ``config`` part of values.schema.json from the settings models.

``config.<section>.<option>`` becomes ``AIRFLOW__<SECTION>__<OPTION>``, so the chart accepts
exactly the options of ``aws_reconciler.config.loader.SECTIONS``, typed and bounded as the models
type and bound them, and the JSON options in the shape AWS takes them (botocore's service
models, the same ones the request builders validate against). Everything else in the file is
written by hand; this script only replaces ``properties.config``.

Usage, from the repository root with the project's virtualenv:

    .venv/bin/python charts/aws-reconciler/generate-schema.py          rewrite values.schema.json
    .venv/bin/python charts/aws-reconciler/generate-schema.py --check  exit 1 if it is out of date
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import botocore
from botocore.model import Shape

from aws_reconciler.backends.batch import spec as batch_spec
from aws_reconciler.backends.ecs import spec as ecs_spec
from aws_reconciler.backends.merge import MERGE_LISTS_BY
from aws_reconciler.backends.requests import input_shape
from aws_reconciler.config.loader import DEFAULT_TASK_QUEUED_TIMEOUT, SECTIONS
from aws_reconciler.config.models import (
    DEPLOYMENT_CHARACTERS,
    DEPLOYMENT_PATTERN,
    MAX_DEPLOYMENT,
    SECRET_OPTIONS,
    BackendSettings,
    CoreSettings,
    SectionSettings,
)

SCHEMA = Path(__file__).resolve().parent / "values.schema.json"
COMMAND = ".venv/bin/python charts/aws-reconciler/generate-schema.py"
# JSON pointer of the generated definitions (botocore structures), inside the generated part.
DEFINITIONS = "#/properties/config/definitions/"

Schema = dict[str, Any]
Option = tuple[str, str]

_FROM_SECRET = "the store URL comes only from the Secret named in database.existingSecret"
_TOKEN_FROM_SECRET = "the token key comes only from the Secret named in tokenKey.existingSecret"
#: Options the chart sets itself or must never carry: why, and so what to do instead.
REFUSED: dict[Option, str] = {
    ("aws_reconciler", "store_url"): _FROM_SECRET,
    ("aws_reconciler", "store_url_cmd"): _FROM_SECRET,
    ("aws_reconciler", "metrics_address"): "the chart sets it from metrics.port, which the probes and the Service use",
    ("aws_reconciler", "token_key"): _TOKEN_FROM_SECRET,
    ("aws_reconciler", "token_key_cmd"): _TOKEN_FROM_SECRET,
}

#: Options with a field validator the JSON Schema keywords pydantic emits cannot express:
#: (schema the value must match, the rule in words as Helm prints it).
RULES: dict[Option, tuple[Schema, str]] = {
    ("aws_reconciler", "deployment"): (
        {"pattern": DEPLOYMENT_PATTERN},
        f"1-{MAX_DEPLOYMENT} characters: {DEPLOYMENT_CHARACTERS}, starting with a letter or digit",
    ),
}


def refusal(text: str) -> Schema:
    """A schema no value satisfies whose error message is ``text``.

    ``not: {}`` would do, but Helm then prints "Must not validate the schema (not)", and
    ``enum: []`` passes everything in Helm 3 and breaks the schema in Helm 4. Helm 3 prints a
    failed ``const`` as ``<option> does not match: "<text>"`` and Helm 4 as ``value must be
    '<text>'``; the ``not`` refuses the text itself too. Helm 3 escapes < and > (as \\u003c),
    so a placeholder such as ``<id>`` is written ``ID``.
    """
    text = re.sub(r"<([^<>]*)>", lambda placeholder: placeholder.group(1).upper(), text)
    return {"const": text, "not": {"const": text}}


def unsettable(reason: str) -> Schema:
    """An option or key the chart refuses whatever its value; Helm prints "must be 'left unset: <reason>'"."""
    return {"description": f"Not settable here: {reason}.", **refusal(f"left unset: {reason}")}


def explained(rule: Schema, text: str) -> Schema:
    """``rule``, failing with ``text`` instead of the keyword's own message (a regex, say)."""
    return {"if": {"not": rule}, "then": refusal(text)}


# ---- botocore shapes -> JSON Schema ----------------------------------------------------------


def shape_schema(shape: Shape, service: str, definitions: dict[str, Schema], *, partial: bool) -> Schema:
    """The JSON Schema of a botocore shape, as botocore's parameter validation and AWS accept it.

    ``partial``: a fragment merged over the request the reconciler builds (``*_kwargs``), so a
    structure's required members may come from that request instead.
    """
    kind = shape.type_name
    if kind == "structure":
        name = f"{service}.{'partial.' if partial else ''}{shape.name}"
        if name not in definitions:
            definitions[name] = {}  # a placeholder stops recursive shapes
            members = getattr(shape, "members", {})
            found: Schema = {
                "type": "object",
                "properties": {
                    m: shape_schema(s, service, definitions, partial=partial and _merged(m, s))
                    for m, s in members.items()
                },
                "additionalProperties": False,
            }
            required = getattr(shape, "required_members", [])
            if required and not partial:
                found["required"] = list(required)
            definitions[name] = found
        return {"$ref": DEFINITIONS + name}
    if kind == "list":
        member = getattr(shape, "member")  # noqa: B009 - only list shapes have it
        return {"type": "array", "items": shape_schema(member, service, definitions, partial=partial)}
    if kind == "map":
        value = getattr(shape, "value")  # noqa: B009 - only map shapes have it
        return {"type": "object", "additionalProperties": shape_schema(value, service, definitions, partial=partial)}
    if kind == "string":
        enum = getattr(shape, "enum", None)
        return {"enum": list(enum)} if enum else {"type": "string"}
    if kind in ("integer", "long", "double", "float"):
        found = {"type": "integer" if kind in ("integer", "long") else "number"}
        for keyword, key in (("minimum", "min"), ("maximum", "max")):
            if key in shape.metadata:
                found[keyword] = shape.metadata[key]
        return found
    if kind == "boolean":
        return {"type": "boolean"}
    if kind == "timestamp":
        return {"type": ["string", "number"]}
    if kind == "blob":
        return {"type": "string"}
    raise SystemExit(f"{service} shape {shape.name}: botocore type {kind!r} has no JSON Schema mapping here")


def _merged(member: str, shape: Shape) -> bool:
    """Whether a fragment's ``member`` is merged into the request's (else it replaces it whole).

    Objects merge key by key and the lists of :data:`MERGE_LISTS_BY` item by item; any other
    list is taken as given, so its items must be complete.
    """
    return shape.type_name != "list" or member in MERGE_LISTS_BY


def request_fragment(
    service: str, operation: str, reserved: Mapping[str, str], definitions: dict[str, Schema]
) -> Schema:
    """An object merged into every ``operation`` request: its parameters, none of ``reserved``."""
    shape = input_shape(service, operation)
    properties: Schema = {}
    for member, member_shape in shape.members.items():
        if member in reserved:
            properties[member] = unsettable(reserved[member])
        else:
            partial = _merged(member, member_shape)
            properties[member] = shape_schema(member_shape, service, definitions, partial=partial)
    return {"type": ["object", "null"], "properties": properties, "additionalProperties": False}


def request_member(service: str, operation: str, member: str, definitions: dict[str, Schema]) -> Schema:
    """One parameter of ``operation``, sent as given."""
    found = shape_schema(input_shape(service, operation).members[member], service, definitions, partial=False)
    return {**found, "type": [found["type"], "null"]}


#: The JSON options (``json_fields``/``json_object_fields`` of the backend sections): the request
#: (or part of it) their value becomes.
JSON_SHAPES: dict[Option, Callable[[dict[str, Schema]], Schema]] = {
    ("aws_reconciler_ecs", "capacity_provider_strategy"): lambda defs: request_member(
        "ecs", "RunTask", "capacityProviderStrategy", defs
    ),
    ("aws_reconciler_ecs", "run_task_kwargs"): lambda defs: request_fragment(
        "ecs", "RunTask", ecs_spec.RESERVED_KEYS, defs
    ),
    ("aws_reconciler_batch", "submit_job_kwargs"): lambda defs: request_fragment(
        "batch", "SubmitJob", {**batch_spec.RESERVED_KEYS, "jobQueue": "set the queue with job_queue"}, defs
    ),
}


# ---- settings models -> JSON Schema ----------------------------------------------------------

_SCALARS = {"string", "number", "integer", "boolean"}
_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength", "pattern")


def _validated(model: type[SectionSettings]) -> set[str]:
    """Options a field validator of ``model`` checks beyond their type (the backends' decoder aside)."""
    found: set[str] = set()
    for name, decorator in model.__pydantic_decorators__.field_validators.items():
        fields = set(decorator.info.fields)
        if fields == {"*"}:
            if issubclass(model, BackendSettings) and name == "_decode":
                continue  # list and JSON decoding: handled through list/JSON options below
            raise SystemExit(f"{model.__name__}.{name} validates every option: teach generate-schema.py its rule")
        found |= fields
    return found


def option_schema(model: type[SectionSettings], option: str, prop: Schema, definitions: dict[str, Schema]) -> Schema:
    """The schema of ``config.<section>.<option>``; null always means "leave it unset"."""
    key = (model.section, option)
    description = model.model_fields[option].description or ""
    if key in REFUSED:
        return unsettable(REFUSED[key])
    # A SecretStr shows as a write-only "password" in pydantic's schema.
    if option in SECRET_OPTIONS or any(v.get("writeOnly") for v in prop.get("anyOf", [prop])):
        raise SystemExit(f"[{model.section}] {option} is a secret: add it to REFUSED (values are no place for it)")
    json_options = getattr(model, "json_fields", frozenset()) | getattr(model, "json_object_fields", frozenset())
    if option in json_options:
        if key not in JSON_SHAPES:
            raise SystemExit(f"[{model.section}] {option} is a JSON option: add its shape to JSON_SHAPES")
        return {"description": description, **JSON_SHAPES[key](definitions)}

    variants = [v for v in prop.get("anyOf", [prop]) if v.get("type") != "null"]
    if len(variants) != 1:
        raise SystemExit(f"[{model.section}] {option}: no JSON Schema mapping for {prop}")
    (variant,) = variants
    found: Schema = {"description": description}
    if "default" in prop:
        found["default"] = prop["default"]
    if option in getattr(model, "list_fields", frozenset()):
        # A YAML list (rendered as JSON), or the comma-separated / JSON string Airflow users write.
        found["type"] = ["array", "string", "null"]
        found["items"] = variant.get("items", {"type": "string"})
    elif "enum" in variant:
        # "" leaves an option unset like null does.
        found["enum"] = [*variant["enum"], "", None]
    elif variant.get("type") in _SCALARS:
        found["type"] = [variant["type"], "null"]
    else:
        raise SystemExit(f"[{model.section}] {option}: no JSON Schema mapping for {prop}")
    for keyword in _BOUNDS:
        if keyword in variant:
            found[keyword] = variant[keyword]
    if key in RULES:
        found.update(explained(*RULES[key]))
    elif option in _validated(model):
        raise SystemExit(
            f"[{model.section}] {option} has a validator: add its rule to RULES (or REFUSED) in generate-schema.py"
        )
    return found


def section_schema(model: type[SectionSettings], definitions: dict[str, Schema]) -> Schema:
    """One settings section: its options and nothing else."""
    properties = model.model_json_schema()["properties"]
    doc = (inspect.getdoc(model) or f"[{model.section}].").splitlines()[0]
    return {
        "type": "object",
        "description": f"{doc} Only these options exist: any other name is refused.",
        "properties": {
            option: option_schema(model, option, properties[option], definitions) for option in model.model_fields
        },
        "additionalProperties": False,
    }


def config_schema() -> Schema:
    """``properties.config`` of values.schema.json."""
    options = {(model.section, option) for model in SECTIONS for option in model.model_fields}
    for table, name in ((REFUSED, "REFUSED"), (RULES, "RULES"), (JSON_SHAPES, "JSON_SHAPES")):
        for section, option in sorted(set(table) - options):
            raise SystemExit(f"{name} names [{section}] {option}, which the settings models do not have")
    definitions: dict[str, Schema] = {}
    sections = {model.section: section_schema(model, definitions) for model in SECTIONS}
    # The reconciler reads Airflow's [scheduler] task_queued_timeout when its own is unset.
    queued = dict(sections[CoreSettings.section]["properties"]["task_queued_timeout"])
    queued["description"] = (
        "Airflow's [scheduler] task_queued_timeout, read when [aws_reconciler] task_queued_timeout is unset."
    )
    queued["default"] = DEFAULT_TASK_QUEUED_TIMEOUT
    sections["scheduler"] = {
        "type": "object",
        "description": "Airflow's [scheduler] options the reconciler reads.",
        "properties": {"task_queued_timeout": queued},
        "additionalProperties": False,
    }
    return {
        "$comment": (
            f"Generated by {COMMAND} from aws_reconciler.config (the settings models) and botocore "
            f"{botocore.__version__}'s ECS and Batch models: do not edit by hand."
        ),
        "type": "object",
        "description": (
            "Settings: config.<section>.<option> -> AIRFLOW__<SECTION>__<OPTION>. Sections: "
            f"{', '.join(sections)} (task_queued_timeout only). null leaves an option unset."
        ),
        "properties": sections,
        "additionalProperties": False,
        "definitions": dict(sorted(definitions.items())),
    }


def render(current: Schema) -> str:
    """values.schema.json with its ``config`` part generated, as written to disk."""
    schema = dict(current)
    schema["properties"] = {**current["properties"], "config": config_schema()}
    return json.dumps(schema, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="only report whether values.schema.json is current")
    args = parser.parse_args(argv)
    text = SCHEMA.read_text()
    wanted = render(json.loads(text))
    if text == wanted:
        print(f"up to date  {SCHEMA.name}")
        return 0
    if args.check:
        print(f"{SCHEMA.name} differs from the settings models: run {COMMAND}", file=sys.stderr)
        return 1
    SCHEMA.write_text(wanted)
    print(f"generated   {SCHEMA.name} (config)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
