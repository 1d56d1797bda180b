"""The workload token at rest: kept out of the stored request, sealed with ``[aws_reconciler]
token_key``, put back byte for byte for the launch, and cleared once the row can never launch again."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet

from aws_reconciler import cli
from aws_reconciler.backends.batch.descriptor import BATCH
from aws_reconciler.backends.descriptor import BackendDescriptor
from aws_reconciler.backends.ecs.descriptor import ECS
from aws_reconciler.config import ConfigError, describe_settings
from aws_reconciler.executor import EcsExecutor
from aws_reconciler.executor.workload import stored_key, workload_command
from aws_reconciler.model import Backend, Phase, TiKey
from aws_reconciler.reconciler.factory import token_sealer
from aws_reconciler.store import NewTask, TaskStore
from aws_reconciler.store.sealing import PLACEHOLDER, TokenSealer, TokenUnavailable
from support.stores import make_settings
from support.workloads import jwt_expiring_at, make_workload

JWT = jwt_expiring_at(datetime(2030, 1, 1, tzinfo=UTC))
BATCH_ENV = {
    "AIRFLOW__AWS_RECONCILER_BATCH__JOB_QUEUE": "airflow",
    "AIRFLOW__AWS_RECONCILER_BATCH__JOB_DEFINITION": "airflow-job",
}


def built_request(descriptor: BackendDescriptor, token: str = JWT) -> dict[str, object]:
    """The request the executor builds for a task whose workload carries ``token``."""
    settings = make_settings("sqlite://", **BATCH_ENV)
    workload = make_workload("t", token=token)
    record_id = workload.ti.external_executor_id
    assert record_id
    request: dict[str, object] = descriptor.build_request(
        descriptor.settings_of(settings),
        deployment="airflow",
        record_id=record_id,
        key=stored_key(workload, record_id),
        command=workload_command(workload),
        executor_config=None,
    )
    return request


@pytest.mark.parametrize("descriptor", [ECS, BATCH], ids=lambda d: d.kind.value)
@pytest.mark.parametrize("encrypted", [True, False], ids=["with token_key", "without token_key"])
def test_the_stored_request_has_no_token_and_opens_to_the_request_built(
    descriptor: BackendDescriptor, encrypted: bool, token_key: str
) -> None:
    sealer = TokenSealer(token_key if encrypted else None)
    request = built_request(descriptor)
    assert JWT in json.dumps(request)

    stored, sealed = sealer.seal_request(request, JWT)

    assert JWT not in json.dumps(stored) and PLACEHOLDER in json.dumps(stored)
    assert sealed is not None
    assert (JWT in sealed) is not encrypted, "encrypted with the key, or kept in clear without one"
    assert sealed.startswith("fernet:" if encrypted else "plain:")
    # What is sent, every time the attempt is (re)launched: the very bytes built at queue time.
    for _ in range(3):
        sent = sealer.open_request(json.loads(json.dumps(stored)), sealed)
        assert json.dumps(sent) == json.dumps(request)


def test_a_workload_without_a_token_is_stored_as_it_is() -> None:
    request = built_request(ECS)
    assert TokenSealer().seal_request(request, None) == (request, None)
    assert TokenSealer().seal_request(request, "not-in-the-request") == (request, None)
    # A request stored before tokens were kept apart is sent as it is.
    assert TokenSealer().open_request(request, None) == request


def test_key_rotation_keeps_the_old_key_listed_after_the_new_one() -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    sealed = TokenSealer(old).seal("the-token")
    assert TokenSealer(f"{new},{old}").open(sealed) == "the-token"
    assert TokenSealer(f"{new},{old}").seal("x").startswith("fernet:")
    assert TokenSealer(new).open(TokenSealer(f"{new},{old}").seal("x")) == "x", "the first key encrypts"
    with pytest.raises(TokenUnavailable, match="another key") as raised:
        TokenSealer(new).open(sealed)
    assert not raised.value.lost and "the-token" not in str(raised.value)


def test_an_encrypted_token_without_a_key_says_which_setting_is_missing(token_key: str) -> None:
    stored, sealed = TokenSealer(token_key).seal_request(built_request(ECS), JWT)
    with pytest.raises(TokenUnavailable, match=r"\[aws_reconciler\] token_key is not set") as raised:
        TokenSealer().open_request(stored, sealed)
    assert not raised.value.lost
    with pytest.raises(TokenUnavailable, match="discarded") as discarded:
        TokenSealer(token_key).open_request(stored, None)
    assert discarded.value.lost


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("c2l4dGVlbi1ieXRlcy1rZXk=", "the key is not a Fernet key"),
        (f"{Fernet.generate_key().decode()},short", "key 2 of 2 is not a Fernet key"),
        (" , ", "is empty"),
    ],
)
def test_a_bad_token_key_stops_start_up_in_one_line_without_the_value(
    value: str, says: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {"AIRFLOW__AWS_RECONCILER__TOKEN_KEY": value}
    settings = make_settings(f"sqlite:///{tmp_path / 'store.db'}", **env)
    with pytest.raises(ConfigError) as raised:
        token_sealer(settings)
    message = str(raised.value)
    assert message.startswith("invalid setting [aws_reconciler] token_key = '***' (from env ")
    assert says in message and (value.strip(" ,") or "never") not in message
    assert "\n" not in message
    # The scheduler side refuses the same way.
    executor = EcsExecutor(parallelism=1)
    executor._settings = settings
    with pytest.raises(ConfigError, match="EcsExecutor cannot start: invalid setting") as start:
        executor.start()
    assert (value.strip(" ,") or "never") not in str(start.value)
    # And `aws-reconciler run`: exit 2, one line.
    monkeypatch.setenv("AIRFLOW_CONFIG", str(tmp_path / "absent.cfg"))
    for name, text in {**env, "AIRFLOW__AWS_RECONCILER__STORE_URL": f"sqlite:///{tmp_path / 's.db'}"}.items():
        monkeypatch.setenv(name, text)
    monkeypatch.setenv("AIRFLOW__AWS_RECONCILER_ECS__CLUSTER", "airflow")
    monkeypatch.setenv("AIRFLOW__AWS_RECONCILER_ECS__TASK_DEFINITION", "airflow-task")
    monkeypatch.setenv("AIRFLOW__AWS_RECONCILER_ECS__CONTAINER_NAME", "base")
    assert cli.main(["run", "--once"]) == cli.ExitCode.CONFIG
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("aws-reconciler: configuration error: invalid setting [aws_reconciler] token_key")


def test_token_key_comes_from_its_command_and_is_shown_masked(tmp_path: Path, token_key: str) -> None:
    script = tmp_path / "key.sh"
    script.write_text(f"#!/bin/sh\necho {token_key}\n")
    script.chmod(0o700)
    settings = make_settings("sqlite://", AIRFLOW__AWS_RECONCILER__TOKEN_KEY_CMD=str(script))
    assert settings.token_key is not None and settings.token_key.get_secret_value() == token_key
    assert settings.token_key_origin.startswith("output of [aws_reconciler] token_key_cmd")
    assert token_sealer(settings).encrypting
    assert token_key not in repr(settings)
    shown = {
        (s, o): v
        for s, o, v, _ in describe_settings(make_settings("sqlite://", AIRFLOW__AWS_RECONCILER__TOKEN_KEY=token_key))
    }
    assert shown[("aws_reconciler", "token_key")] == "***"


# ---- the store clears the token once it cannot be needed any more ---------------------------------


def _row(store: TaskStore, token: str | None) -> str:
    record_id = str(uuid.uuid4())
    store.add(
        [
            NewTask(
                id=record_id,
                backend=Backend.ECS,
                owner="1",
                key=TiKey("dag", f"t-{record_id[:8]}", "run", -1, 1),
                queue=None,
                target="cluster",
                spec={"command": [PLACEHOLDER]},
                workload_token=token,
            )
        ]
    )
    return record_id


def _stored_token(store: TaskStore, record_id: str) -> str | None:
    return store.launch_requests([record_id])[record_id].workload_token


@pytest.mark.parametrize(
    ("path", "kept"),
    [
        # Launched, accepted, not started yet: a task that stops before its container starts is
        # launched again as a new attempt, with the same token.
        ((Phase.LAUNCHING,), True),
        ((Phase.LAUNCHING, Phase.PROVISIONING), True),
        ((Phase.LAUNCHING, Phase.PENDING), True),
        # The container started: no launch ever follows.
        ((Phase.LAUNCHING, Phase.PROVISIONING, Phase.RUNNING), False),
        ((Phase.LAUNCHING, Phase.PROVISIONING, Phase.STOPPING), False),
        ((Phase.LAUNCHING, Phase.PROVISIONING, Phase.SUCCEEDED), False),
        ((Phase.FAILED,), False),
        ((Phase.REVOKED,), False),
    ],
    ids=lambda path: "->".join(p.value for p in path) if isinstance(path, tuple) else "",
)
def test_the_token_is_kept_exactly_while_the_row_may_still_be_launched(
    store: TaskStore, path: tuple[Phase, ...], kept: bool
) -> None:
    record_id = _row(store, "plain:the-token")
    current = Phase.PENDING
    for phase in path:
        assert store.transition(record_id, expect_phases=[current], phase=phase)
        current = phase
    assert (_stored_token(store, record_id) is not None) is kept
    # A write that does not move the phase leaves the token alone.
    other = _row(store, "plain:other")
    assert store.transition(other, expect_phases=[Phase.PENDING], next_attempt_at=datetime.now(UTC))
    assert _stored_token(store, other) == "plain:other"


def test_a_row_failed_at_queue_time_stores_no_token(store: TaskStore) -> None:
    record_id = str(uuid.uuid4())
    store.add(
        [
            NewTask(
                id=record_id,
                backend=Backend.ECS,
                owner="1",
                key=TiKey("dag", "bad", "run", -1, 1),
                queue=None,
                target=None,
                spec=None,
                phase=Phase.FAILED,
                workload_token="plain:the-token",
            )
        ]
    )
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT workload_token FROM aws_reconciler_task")).scalar() is None


# ---- rows stored before the token had its own column (migration 0004) -------------------------------


@pytest.mark.parametrize("database", ["sqlite", "postgres", "mariadb"])
def test_rows_stored_before_0004_keep_their_token_only_while_they_may_still_launch(
    database: str, request: pytest.FixtureRequest
) -> None:
    from alembic import command

    from aws_reconciler.store import create_store_engine, migrate
    from aws_reconciler.store.migrate import _config, head_revision
    from support.stores import sent_request

    url = str(
        request.getfixturevalue({"sqlite": "sqlite_url", "postgres": "pg_schema_url"}.get(database, "mariadb_url"))
    )
    engine = create_store_engine(url)
    config = _config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0003")
    request_with_token = built_request(ECS)
    rows = sa.table(
        "aws_reconciler_task",
        *(sa.column(c) for c in ("id", "backend", "owner", "dag_id", "task_id", "run_id", "map_index")),
        *(sa.column(c) for c in ("try_number", "desired", "phase", "attempt", "created_at", "updated_at")),
        sa.column("spec", sa.JSON),
    )
    now = datetime.now(UTC)
    now = now if engine.dialect.name == "postgresql" else now.replace(tzinfo=None)
    common = {"backend": "ecs", "owner": "1", "dag_id": "d", "run_id": "r", "map_index": -1, "try_number": 1}
    common |= {"desired": "running", "attempt": 0, "created_at": now, "updated_at": now, "spec": request_with_token}
    with engine.begin() as conn:
        conn.execute(
            rows.insert(),
            [
                {**common, "id": "waiting", "task_id": "a", "phase": "pending"},
                {**common, "id": "running", "task_id": "b", "phase": "running"},
                {**common, "id": "ended", "task_id": "c", "phase": "succeeded"},
                {**common, "id": "no-token", "task_id": "d", "phase": "pending", "spec": {"command": ["true"]}},
            ],
        )
    assert migrate(engine) == ("0003", head_revision())

    store = TaskStore(engine)
    stored = store.launch_requests(["waiting", "running", "ended", "no-token"])
    assert {k: (v.workload_token or "")[:6] for k, v in stored.items()} == {
        "waiting": "plain:",
        "running": "",
        "ended": "",
        "no-token": "",
    }
    assert not any(JWT in json.dumps(v.spec) for v in stored.values())
    assert json.dumps(sent_request(store, "waiting")) == json.dumps(request_with_token)
    assert stored["no-token"].spec == {"command": ["true"]}

    # Back to 0003: the clear token returns into its request.
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0003")
    with engine.connect() as conn:
        specs = dict(conn.execute(sa.select(rows.c.id, rows.c.spec)).all())
    assert json.dumps(specs["waiting"]) == json.dumps(request_with_token)
    engine.dispose()
