"""``--json`` outputs of ``config show``, ``status`` and ``check`` hold to their documented schemas."""

from __future__ import annotations

import json
import os
from typing import Any

import jsonschema
import pytest

from aws_reconciler.cli import ExitCode, main
from aws_reconciler.model import Backend, Phase, TiKey
from aws_reconciler.store import NewTask, TaskStore, create_store_engine, migrate
from aws_reconciler_sandbox import SandboxServer

REGION = "us-east-1"
_STR_OR_NULL = {"type": ["string", "null"]}

CONFIG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["options", "backends"],
    "additionalProperties": False,
    "properties": {
        "options": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["section", "option", "value", "origin"],
                "additionalProperties": False,
                "properties": {k: {"type": "string"} for k in ("section", "option", "value", "origin")},
            },
        },
        "backends": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["backend", "executor", "enabled", "targets", "option"],
                "properties": {
                    "backend": {"enum": [b.value for b in Backend]},
                    "enabled": {"type": "boolean"},
                    "targets": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}
RECORD: dict[str, Any] = {
    "type": "object",
    "required": ["id", "backend", "phase", "dag_id", "task_id", "run_id", "map_index", "try_number", "attempt"],
    "properties": {
        "backend": {"enum": [b.value for b in Backend]},
        "phase": {"enum": [p.value for p in Phase]},
        "map_index": {"type": "integer"},
        "try_number": {"type": "integer"},
        "external_id": _STR_OR_NULL,
        "reason": _STR_OR_NULL,
    },
}
STATUS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["store", "generated_at", "counts", "oldest_waiting", "recent_failures"],
    "properties": {
        "counts": {
            "type": "object",
            "additionalProperties": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}},
        },
        "oldest_waiting": {"type": "object", "additionalProperties": RECORD},
        "recent_failures": {"type": "array", "items": RECORD},
    },
}
CHECK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["identity", "results"],
    "properties": {
        "identity": {
            "type": "object",
            "required": ["ok", "detail", "arn", "account", "region"],
            "properties": {"ok": {"type": "boolean"}},
        },
        "results": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["permission", "status", "detail"],
                "additionalProperties": False,
                "properties": {
                    "permission": {"type": "string"},
                    "status": {"enum": ["ok", "missing", "error"]},
                    "detail": {"type": "string"},
                },
            },
        },
        "store": {"type": "object", "required": ["permission", "status", "detail"]},
    },
}


def _json(capsys: pytest.CaptureFixture[str], argv: list[str], code: int = ExitCode.OK) -> Any:
    assert main(argv) == code
    return json.loads(capsys.readouterr().out)


def test_config_show_json(configured: SandboxServer, capsys: pytest.CaptureFixture[str]) -> None:
    document = _json(capsys, ["config", "show", "--json"])
    jsonschema.validate(document, CONFIG_SCHEMA)
    assert {b["backend"]: b["enabled"] for b in document["backends"]} == {"ecs": True, "batch": True}
    store = next(o for o in document["options"] if o["option"] == "store_url")
    assert store["value"].startswith("sqlite:///")


def test_status_json_counts_rows_and_lists_failures(
    configured: SandboxServer, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = create_store_engine(os.environ["AIRFLOW__AWS_RECONCILER__STORE_URL"])
    migrate(engine)
    store = TaskStore(engine)
    for n, phase in enumerate([Phase.PENDING, Phase.PENDING, Phase.FAILED]):
        store.add(
            [
                NewTask(
                    id=f"00000000-0000-0000-0000-00000000000{n}",
                    backend=Backend.ECS,
                    owner="1",
                    key=TiKey("dag", f"t{n}", "run", -1, 1),
                    queue=None,
                    target="airflow",
                    spec={"cluster": "airflow"},
                    phase=phase,
                    status_reason="invalid executor_config key 'x'" if phase is Phase.FAILED else None,
                )
            ]
        )
    document = _json(capsys, ["status", "--json", "--failures", "5"])
    jsonschema.validate(document, STATUS_SCHEMA)
    assert document["counts"] == {"ecs": {"pending": 2, "failed": 1}}
    assert [f["task_id"] for f in document["recent_failures"]] == ["t2"]
    assert document["oldest_waiting"]["ecs"]["phase"] == "pending"


def test_check_json(configured: SandboxServer, capsys: pytest.CaptureFixture[str]) -> None:
    document = _json(capsys, ["check", "--json", "--store"], code=ExitCode.SCHEMA)
    jsonschema.validate(document, CHECK_SCHEMA)
    assert document["identity"]["ok"] is True and document["identity"]["account"]
    assert {r["status"] for r in document["results"]} == {"ok"}
    permissions = {r["permission"].split(" ")[0] for r in document["results"]}
    assert {"ecs:RunTask", "ecs:StopTask", "batch:SubmitJob+TagResource", "batch:TerminateJob"} <= permissions
    # Not migrated yet: the store check says so, and the exit code is the schema's.
    assert document["store"]["status"] == "missing"
