"""``aws-reconciler status``: tasks by backend and phase, the oldest pending, recent failures with
their reasons, read from the store alone (SQLite and PostgreSQL)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from aws_reconciler import cli
from aws_reconciler.model import Backend, Phase, TiKey
from aws_reconciler.status import format_age, render_status, scrub
from aws_reconciler.store import NewTask, TaskStore, create_store_engine, migrate
from aws_reconciler.store.queries import TaskQueries

NOW = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)


class Clock:
    """A settable clock for the store, so ages and orders are exact."""

    def __init__(self) -> None:
        self.now = NOW - timedelta(hours=1)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def populated(store_url: str, clock: Clock) -> Iterator[tuple[TaskStore, dict[str, str]]]:
    """ecs: 2 pending (queued 5 min and 1 min ago), 1 running, 1 succeeded, 3 failed; batch: 1 pending."""
    engine = create_store_engine(store_url)
    migrate(engine)
    store = TaskStore(engine, clock=clock)
    ids: dict[str, str] = {}

    def add(name: str, *, backend: Backend = Backend.ECS, at: datetime, try_number: int = 1) -> str:
        clock.now = at
        record_id = str(uuid.uuid4())
        store.add(
            [
                NewTask(
                    id=record_id,
                    backend=backend,
                    owner="1",
                    key=TiKey("etl", name, "scheduled__2030-01-01T00:00:00+00:00", -1, try_number),
                    queue="default",
                    target="airflow",
                    spec={"taskDefinition": "airflow-task"},
                )
            ]
        )
        ids[name] = record_id
        return record_id

    def finish(name: str, phase: Phase, *, at: datetime, reason: str | None, exit_code: int | None = None) -> None:
        clock.now = at
        assert store.transition(
            ids[name],
            expect_phases=[Phase.PENDING],
            phase=phase,
            external_id=f"arn:aws:ecs:us-east-1:1:task/airflow/{name}",
            status_reason=reason,
            exit_code=exit_code,
            stop_code="EssentialContainerExited" if exit_code is not None else None,
        )

    add("old_pending", at=NOW - timedelta(minutes=5))
    add("new_pending", at=NOW - timedelta(minutes=1))
    add("batch_pending", backend=Backend.BATCH, at=NOW - timedelta(seconds=30))
    add("running", at=NOW - timedelta(minutes=20))
    clock.now = NOW - timedelta(minutes=19)
    store.transition(ids["running"], expect_phases=[Phase.PENDING], phase=Phase.RUNNING, external_id="arn:1")
    add("ok", at=NOW - timedelta(minutes=40))
    finish("ok", Phase.SUCCEEDED, at=NOW - timedelta(minutes=30), reason=None, exit_code=0)
    add("oom", at=NOW - timedelta(minutes=50))
    finish("oom", Phase.FAILED, at=NOW - timedelta(minutes=45), reason="OutOfMemoryError: killed", exit_code=137)
    add("capacity", at=NOW - timedelta(minutes=30))
    finish("capacity", Phase.FAILED, at=NOW - timedelta(minutes=10), reason="gave up after 3 launch attempts")
    add("bad_image", at=NOW - timedelta(minutes=9))
    finish(
        "bad_image",
        Phase.FAILED,
        at=NOW - timedelta(minutes=2),
        reason="task stopped before its container started:\nCannotPullContainerError: pull failed",
    )
    clock.now = NOW
    yield store, ids
    engine.dispose()


def _lines(text: str, heading: str) -> list[str]:
    """The lines of one section (after ``heading``, up to the next blank line)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading)) + 1
    end = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
    return lines[start:end]


def test_status_tables(populated: tuple[TaskStore, dict[str, str]]) -> None:
    store, ids = populated
    text = render_status(TaskQueries(store.engine), store_label="sqlite:///x.db", failures=10, clock=lambda: NOW)
    assert text.splitlines()[0] == "task store: sqlite:///x.db"

    header, batch, ecs = _lines(text, "Tasks by backend and phase")
    assert header.split() == [
        "BACKEND",
        "PENDING",
        "LAUNCHING",
        "PROVISIONING",
        "RUNNING",
        "STOPPING",
        "SUCCEEDED",
        "FAILED",
        "REVOKED",
        "TOTAL",
    ]
    assert batch.split() == ["batch", "1", "0", "0", "0", "0", "0", "0", "0", "1"]
    assert ecs.split() == ["ecs", "2", "0", "0", "1", "0", "1", "3", "0", "7"]

    oldest = _lines(text, "Oldest task waiting")
    assert oldest[0].startswith("batch: waiting 30s  etl.batch_pending scheduled__2030-01-01T00:00:00+00:00 try 1")
    assert oldest[1].startswith("ecs: waiting 5m00s  etl.old_pending ")
    assert f"record {ids['old_pending']}" in oldest[1]
    assert "(pending, attempt 0)" in oldest[1]

    header, *failures = _lines(text, "Recent failures (latest 10)")
    assert header.split()[:6] == ["FINISHED", "(UTC)", "AGE", "BACKEND", "TASK", "EXIT"]
    assert [f.split()[5] for f in failures] == ["etl.bad_image", "etl.capacity", "etl.oom"], "newest first"
    assert "2m00s ago" in failures[0]
    # One line each, even when AWS's reason spans lines.
    assert failures[0].endswith("task stopped before its container started: CannotPullContainerError: pull failed")
    assert "gave up after 3 launch attempts" in failures[1]
    assert " 137 " in failures[2] and failures[2].endswith("[EssentialContainerExited] OutOfMemoryError: killed")


def test_status_limits_the_failures(populated: tuple[TaskStore, dict[str, str]]) -> None:
    store, _ = populated
    text = render_status(TaskQueries(store.engine), store_label="x", failures=1, clock=lambda: NOW)
    _, *failures = _lines(text, "Recent failures (latest 1)")
    assert len(failures) == 1 and "etl.bad_image" in failures[0]


def test_status_of_an_empty_store(sqlite_url: str) -> None:
    engine = create_store_engine(sqlite_url)
    migrate(engine)
    text = render_status(TaskQueries(engine), store_label="x", clock=lambda: NOW)
    assert "no task records" in text
    assert "nothing is waiting for a launch" in text
    assert "no failed tasks" in text


def test_status_command(
    populated: tuple[TaskStore, dict[str, str]],
    store_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """``aws-reconciler status --failures 2`` on the configured store."""
    monkeypatch.setenv("AIRFLOW_CONFIG", str(tmp_path / "absent.cfg"))
    monkeypatch.setenv("AIRFLOW__AWS_RECONCILER__STORE_URL", store_url)
    assert cli.main(["status", "--failures", "2"]) == 0
    out = capsys.readouterr().out
    assert "Recent failures (latest 2):" in out
    assert "etl.bad_image" in out and "etl.capacity" in out and "etl.oom" not in out
    assert "etl.old_pending" in out


def test_status_command_refuses_an_unmigrated_store(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("AIRFLOW_CONFIG", str(tmp_path / "absent.cfg"))
    monkeypatch.setenv("AIRFLOW__AWS_RECONCILER__STORE_URL", sqlite_url)
    assert cli.main(["status"]) == 3
    assert "aws-reconciler db migrate" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (42.9, "42s"), (245, "4m05s"), (7380, "2h03m"), (3 * 86400 + 4 * 3600, "3d04h"), (-5, "0s")],
)
def test_format_age(seconds: float, text: str) -> None:
    assert format_age(seconds) == text


def test_scrub_masks_tokens_and_joins_lines() -> None:
    token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    assert scrub(f"launch failed:\n  bad request {token} here") == "launch failed: bad request *** here"
