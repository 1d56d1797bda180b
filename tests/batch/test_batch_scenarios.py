"""Scenarios of the reconciler on AWS Batch: real ``Controller`` cycles against the sandbox and a real store.

The Batch twin of ``tests/reconciler/test_reconciler_scenarios.py``: each test sets up a world
(rows built the way the BatchExecutor builds them, jobs on the fake AWS, injected faults), runs
cycles, moves a fake clock instead of sleeping, and asserts what Batch and the store end up with.
Every scenario runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pytest
from batch_support import DEPLOYMENT, QUEUE, Harness
from botocore.exceptions import ClientError
from sqlalchemy.exc import OperationalError

from aws_reconciler.backends.batch.spec import job_name
from aws_reconciler.backends.errors import Outcome
from aws_reconciler.backends.tags import DEPLOYMENT_TAG, ID_TAG
from aws_reconciler.model import Phase
from aws_reconciler.reconciler.controller import Controller
from aws_reconciler.reconciler.leader import LeaderElector
from aws_reconciler.reconciler.manager import Manager
from aws_reconciler.reconciler.result import Result
from aws_reconciler.store import LeaseStore, Waker
from support.scenario import Crash

if TYPE_CHECKING:
    from conftest import HarnessFactory

TOO_MANY: dict[str, Any] = {"code": "TooManyRequestsException", "message": "Too Many Requests", "status": 429}


def cycle(engine: Controller) -> Result:
    """One reconcile cycle."""
    return engine.reconcile()


def launched_job(h: Harness, record_id: str) -> str:
    job_id = h.row(record_id).external_id
    assert job_id, f"row {record_id} has no job"
    return job_id


# ---- 1. submit and lifecycle -----------------------------------------------------------------


def test_submit_carries_identity_and_the_row_follows_the_job_lifecycle(make_harness: HarnessFactory) -> None:
    """A submit carries the identity (tags, job name af-<id>-1, the workload's command, tag
    propagation) after a JOB_NAME lookup; the row follows the job: RUNNABLE -> provisioning,
    RUNNING -> running, SUCCEEDED -> succeeded, FAILED with exit code 137 -> failed."""
    h = make_harness()
    commands = [["airflow", "tasks", "run", "ok"], ["airflow", "tasks", "run", "killed"]]
    ok, killed = h.add(2, commands=commands)
    engine = h.engine()

    assert cycle(engine).stats.launched == 2
    assert (h.calls("ListJobs"), h.calls("SubmitJob")) == (2 + 5, 2)  # 2 lookups, 5 statuses discovered
    for record_id, command in zip((ok, killed), commands, strict=True):
        row = h.row(record_id)
        assert (row.phase, row.attempt) == (Phase.PROVISIONING, 1)
        [job] = h.jobs_of(record_id)
        assert job["jobId"] == row.external_id
        assert job["jobName"] == f"af-{record_id}-1"
        assert job["status"] == "RUNNABLE"
        assert job["tags"][DEPLOYMENT_TAG] == DEPLOYMENT
        assert job["tags"]["airflow:dag_id"] == "scenario_dag"
        assert job["tags"]["airflow:try_number"] == "1"
        assert job["request"]["containerOverrides"]["command"] == command
        assert job["request"]["propagateTags"] is True
        assert "jobName" not in (h.store.specs([record_id])[record_id]), "the name is per attempt, not in the spec"

    ok_job, killed_job = launched_job(h, ok), launched_job(h, killed)
    for job_id in (ok_job, killed_job):
        h.sandbox.set_job_state(job_id=job_id, status="RUNNING")
    cycle(engine)
    for record_id in (ok, killed):
        row = h.row(record_id)
        assert row.phase is Phase.RUNNING
        assert row.started_at is not None and row.finished_at is None

    h.sandbox.set_job_state(job_id=ok_job, status="SUCCEEDED", exit_code=0)
    h.sandbox.set_job_state(job_id=killed_job, status="FAILED", exit_code=137)
    stats = cycle(engine).stats
    assert (stats.finished, stats.failed) == (1, 1)
    succeeded = h.row(ok)
    assert (succeeded.phase, succeeded.exit_code) == (Phase.SUCCEEDED, 0)
    assert succeeded.finished_at is not None
    failed = h.row(killed)
    assert (failed.phase, failed.exit_code) == (Phase.FAILED, 137)
    assert failed.status_reason and "137" in failed.status_reason and "Essential container" in failed.status_reason

    # Finished rows are never submitted again: Airflow's retries own re-execution.
    h.clock.advance(3600)
    cycle(engine)
    assert h.calls("SubmitJob") == 2


# ---- 2. crash and lost answers ---------------------------------------------------------------


@pytest.mark.parametrize("rows", [1, 120], ids=["one-row", "120-rows-paginated"])
def test_crash_after_submit_then_a_new_engine_adopts_the_job(make_harness: HarnessFactory, rows: int) -> None:
    """The process dies after SubmitJob but before the job id is stored: a new process ends up with
    exactly one job per row, each row carrying its id, without submitting again (discovery pages
    through ListJobs, 50 a page here, and describes 100 jobs a call)."""
    h = make_harness()
    ids = h.add(rows)
    backend = h.backend()
    real_launch = backend.launch
    crashed = threading.Condition()
    launched: list[str] = []

    def launch_then_crash(**kwargs: Any) -> str:
        real_launch(**kwargs)
        with crashed:
            launched.append(kwargs["record_id"])
            crashed.notify_all()
        raise Crash

    backend.launch = launch_then_crash  # type: ignore[method-assign]
    first = h.engine(backend=backend)
    with pytest.raises(Crash):
        cycle(first)
    with crashed:  # every submit already started reaches Batch before the "process" is gone
        assert crashed.wait_for(lambda: len(launched) == rows, timeout=30)
    first.close()

    jobs: dict[str, str] = {}
    for record_id in ids:
        row = h.row(record_id)
        assert (row.phase, row.attempt, row.external_id) == (Phase.LAUNCHING, 1, None)
        [job] = h.jobs_of(record_id)
        jobs[record_id] = job["jobId"]

    second_backend = h.backend()
    second_backend.list_page = 50
    h.sandbox.reset_calls()
    second = h.engine(backend=second_backend)  # a new process: new engine, backend and client, same store
    cycle(second)

    assert h.calls("SubmitJob") == 0
    assert h.calls("DescribeJobs") == -(-rows // 100)
    for record_id in ids:
        assert [j["jobId"] for j in h.jobs_of(record_id)] == [jobs[record_id]]
        row = h.row(record_id)
        assert (row.phase, row.attempt, row.external_id) == (Phase.PROVISIONING, 1, jobs[record_id])
        assert row.launched_at is not None

    for job_id in jobs.values():
        h.sandbox.set_job_state(job_id=job_id, status="RUNNING")
    cycle(second)
    assert all(h.row(r).phase is Phase.RUNNING for r in ids)


def test_crash_after_submit_is_recovered_by_the_job_name_when_discovery_misses_it(
    make_harness: HarnessFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batch has no client token. Even when discovery cannot see the lost job, relaunching the
    launching row (same attempt) first looks its name up and takes the job Batch already has; the
    lookup waits out lookup_delay after the claim, since ListJobs may not list a new job at once."""
    h = make_harness()
    [record_id] = h.add()
    backend = h.backend()
    real_launch = backend.launch

    def launch_then_crash(**kwargs: Any) -> str:
        real_launch(**kwargs)
        raise Crash

    monkeypatch.setattr(backend, "launch", launch_then_crash)
    first = h.engine(backend=backend)
    with pytest.raises(Crash):
        cycle(first)
    first.close()
    [job] = h.jobs_of(record_id)

    second_backend = h.backend()
    monkeypatch.setattr(second_backend, "discover", lambda: [])
    h.sandbox.reset_calls()
    second = h.engine(backend=second_backend)
    cycle(second)
    assert (h.calls("ListJobs"), h.calls("SubmitJob")) == (0, 0), "looked up before ListJobs could list it"
    assert h.row(record_id).phase is Phase.LAUNCHING

    h.clock.advance(h.settings.batch.lookup_delay)
    cycle(second)
    assert (h.calls("ListJobs"), h.calls("SubmitJob")) == (1, 0)
    assert [j["jobId"] for j in h.jobs_of(record_id)] == [job["jobId"]]
    row = h.row(record_id)
    assert (row.phase, row.attempt, row.external_id) == (Phase.PROVISIONING, 1, job["jobId"])


@pytest.mark.parametrize("recovered_by", ["job_name", "discovery"])
def test_phantom_500_on_submit_leaves_exactly_one_job(make_harness: HarnessFactory, recovered_by: str) -> None:
    """SubmitJob creates the job but the caller sees a 500: the row keeps its attempt, and the next
    try (JOB_NAME lookup, or discovery by tags) finds the job instead of submitting a second one."""
    h = make_harness(AIRFLOW__AWS_RECONCILER__RESYNC_INTERVAL="60")
    [record_id] = h.add()
    engine = h.engine()
    h.sandbox.inject_error(
        operation="batch:SubmitJob", code="ServerException", message="Internal error", status=500, phantom=True
    )

    assert cycle(engine).stats.launched == 0
    row = h.row(record_id)
    assert (row.phase, row.attempt, row.external_id) == (Phase.LAUNCHING, 1, None)
    assert row.last_error and "ServerException" in row.last_error
    assert row.next_attempt_at and row.next_attempt_at > h.clock()
    [job] = h.jobs_of(record_id)  # it was submitted

    cycle(engine)  # not before the backoff
    assert h.calls("SubmitJob") == 1
    if recovered_by == "job_name":
        h.clock.set(row.next_attempt_at)  # well within resync_interval: no discovery
    else:
        h.clock.advance(60)  # discovery is due and adopts the job before any relaunch
    cycle(engine)

    assert h.calls("SubmitJob") == 1
    assert [j["jobId"] for j in h.jobs_of(record_id)] == [job["jobId"]]
    row = h.row(record_id)
    assert (row.phase, row.attempt, row.external_id) == (Phase.PROVISIONING, 1, job["jobId"])


# ---- 3. retries and terminal errors ----------------------------------------------------------


def test_an_ambiguous_submit_error_is_retried_with_the_same_name_after_backoff(make_harness: HarnessFactory) -> None:
    """A 5xx (not known to have created anything) twice: the row stays launching with attempt 1, is
    not retried before its delay (at least lookup_delay, and growing though the attempt stays),
    then submits once, under the same name af-<id>-1."""
    h = make_harness(AIRFLOW__AWS_RECONCILER__BACKOFF_BASE="2", AIRFLOW__AWS_RECONCILER_BATCH__LOOKUP_DELAY="3")
    # Full jitter: the lookup delay (3 s) beats the first backoff (2 s); the next is 4 x 3 s.
    engine = h.engine(rng=lambda: 1.0)
    [record_id] = h.add()
    h.sandbox.inject_error(operation="SubmitJob", code="ServerException", message="Internal", status=500, times=2)

    for tries, delay in ((1, 3), (2, 12)):
        assert cycle(engine).stats.launch_retries == 1
        row = h.row(record_id)
        assert (row.phase, row.attempt, row.external_id) == (Phase.LAUNCHING, 1, None)
        assert row.next_attempt_at == h.clock() + timedelta(seconds=delay)
        h.clock.set(row.next_attempt_at - timedelta(milliseconds=1))
        cycle(engine)
        assert h.calls("SubmitJob") == tries, "retried before the backoff elapsed"
        h.clock.set(row.next_attempt_at)

    assert cycle(engine).stats.launched == 1
    row = h.row(record_id)
    assert (row.phase, row.attempt, row.last_error) == (Phase.PROVISIONING, 1, None)
    [job] = h.jobs_of(record_id)
    assert (job["jobId"], job["jobName"]) == (row.external_id, job_name(record_id, 1))


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("ClientException", "Job definition airflow-job:7 does not exist"),
        ("AccessDeniedException", "User: arn:aws:sts::123456789012:assumed-role/r is not authorized"),
    ],
)
def test_terminal_submit_error_fails_the_row_with_the_aws_reason(
    make_harness: HarnessFactory, code: str, message: str
) -> None:
    """A non-retriable SubmitJob error fails the row at once, in AWS's words, and is not retried."""
    h = make_harness()
    engine = h.engine()
    [record_id] = h.add()
    h.sandbox.inject_error(operation="SubmitJob", code=code, message=message)

    assert cycle(engine).stats.failed == 1
    row = h.row(record_id)
    assert row.phase is Phase.FAILED
    assert row.status_reason and code in row.status_reason and message in row.status_reason
    h.clock.advance(3600)
    cycle(engine)
    assert h.calls("SubmitJob") == 1
    assert h.jobs_of(record_id) == []


# ---- 4. jobs that never started --------------------------------------------------------------


@pytest.mark.parametrize(
    "failed_start",
    [
        {"container_reason": "CannotPullContainerError: pull image manifest has been retried 5 time(s)"},
        {
            "status_reason": "Task failed to start",
            "container_reason": "ResourceInitializationError: unable to pull secrets or registry auth",
        },
    ],
    ids=["CannotPullContainerError", "ResourceInitializationError"],
)
def test_job_failed_before_its_container_started_is_resubmitted_up_to_the_limit(
    make_harness: HarnessFactory, failed_start: dict[str, Any]
) -> None:
    """A job that fails before its container ran is submitted again as attempt+1 (a new name) after
    backoff, up to max_submit_job_attempts; then the row fails naming the attempts."""
    h = make_harness(AIRFLOW__AWS_RECONCILER_BATCH__MAX_SUBMIT_JOB_ATTEMPTS="2")
    engine = h.engine()
    [record_id] = h.add()

    cycle(engine)
    first = launched_job(h, record_id)
    h.sandbox.set_job_state(job_id=first, status="FAILED", **failed_start)
    assert cycle(engine).stats.launch_retries == 1
    row = h.row(record_id)
    assert (row.phase, row.attempt, row.external_id) == (Phase.PENDING, 1, None)
    assert row.next_attempt_at and row.next_attempt_at > h.clock()
    assert row.last_error and "before its container started" in row.last_error

    h.clock.set(row.next_attempt_at)
    assert cycle(engine).stats.launched == 1
    row = h.row(record_id)
    assert (row.phase, row.attempt) == (Phase.PROVISIONING, 2)
    second = launched_job(h, record_id)
    assert second != first
    assert [j["jobName"] for j in h.jobs_of(record_id)] == [f"af-{record_id}-1", f"af-{record_id}-2"]

    h.sandbox.set_job_state(job_id=second, status="FAILED", **failed_start)
    assert cycle(engine).stats.failed == 1
    row = h.row(record_id)
    assert (row.phase, row.attempt) == (Phase.FAILED, 2)
    assert row.status_reason and "2 launch attempts" in row.status_reason
    h.clock.advance(3600)
    cycle(engine)
    assert h.calls("SubmitJob") == 2


@pytest.mark.parametrize(
    "ending",
    [
        {"status": "FAILED", "exit_code": 1},
        {"status": "FAILED", "status_reason": "Cancelled by an operator"},
    ],
    ids=["ran-and-failed", "cancelled-by-someone"],
)
def test_a_job_that_ran_or_was_cancelled_is_not_resubmitted(
    make_harness: HarnessFactory, ending: dict[str, Any]
) -> None:
    """Only positive evidence of a start failure resubmits: a container that exited non-zero, or a
    job cancelled by somebody else (no exit code, no start failure), fails the row."""
    h = make_harness()
    engine = h.engine()
    [record_id] = h.add()
    cycle(engine)
    h.sandbox.set_job_state(job_id=launched_job(h, record_id), **ending)
    cycle(engine)
    h.clock.advance(3600)
    cycle(engine)
    row = h.row(record_id)
    assert (row.phase, row.attempt, row.exit_code) == (Phase.FAILED, 1, ending.get("exit_code"))
    assert h.calls("SubmitJob") == 1


def test_a_long_record_id_still_gets_a_valid_new_job_name_per_attempt(make_harness: HarnessFactory) -> None:
    """Ids fill the store's 64-character column and may hold characters job names do not allow:
    every attempt still gets a valid name of its own (<= 128 letters, digits, - and _)."""
    h = make_harness(AIRFLOW__AWS_RECONCILER_BATCH__MAX_SUBMIT_JOB_ATTEMPTS="2")
    engine = h.engine()
    [record_id] = h.add(ids=["scheduled:" + uuid.uuid4().hex + uuid.uuid4().hex[:22]])
    assert len(record_id) == 64

    cycle(engine)
    h.sandbox.set_job_state(job_id=launched_job(h, record_id), status="FAILED", container_reason="Task failed to start")
    cycle(engine)
    h.clock.set(h.row(record_id).next_attempt_at or h.clock())
    cycle(engine)

    assert h.row(record_id).attempt == 2
    names = [j["jobName"] for j in h.jobs_of(record_id)]
    assert len(set(names)) == 2
    assert all(len(name) <= 128 and name.replace("-", "").replace("_", "").isalnum() for name in names)


# ---- 5. revoke -------------------------------------------------------------------------------


def test_revoke_cancels_a_waiting_job_terminates_a_running_one_and_fails_a_pending_row(
    make_harness: HarnessFactory,
) -> None:
    """Revoked rows: a RUNNABLE job gets CancelJob, a RUNNING job TerminateJob; both rows end revoked
    ("revoked by Airflow") once the jobs are seen FAILED; a row never submitted ends without a submit."""
    h = make_harness()
    engine = h.engine()
    waiting, running = h.add(2)
    cycle(engine)
    waiting_job, running_job = launched_job(h, waiting), launched_job(h, running)
    h.sandbox.set_job_state(job_id=running_job, status="RUNNING")
    cycle(engine)
    [pending] = h.add()

    assert h.store.revoke(ids=[waiting, running, pending]) == 3
    assert cycle(engine).stats.stopped == 2
    assert (h.calls("CancelJob"), h.calls("TerminateJob")) == (1, 1)
    cancelled, terminated = h.job(waiting_job), h.job(running_job)
    assert (cancelled["status"], cancelled["isCancelled"]) == ("FAILED", True)
    assert (terminated["status"], terminated["isTerminated"]) == ("FAILED", True)
    assert "revoked" in cancelled["statusReason"] and "revoked" in terminated["statusReason"]
    never = h.row(pending)
    assert (never.phase, never.attempt) == (Phase.REVOKED, 0)
    assert never.status_reason and "revoked" in never.status_reason
    assert h.jobs_of(pending) == []

    cycle(engine)
    for record_id in (waiting, running):
        row = h.row(record_id)
        assert row.phase is Phase.REVOKED
        assert row.status_reason and row.status_reason.startswith("revoked by Airflow")
    assert (h.calls("CancelJob"), h.calls("TerminateJob"), h.calls("SubmitJob")) == (1, 1, 2)


def test_a_cancel_that_did_not_take_is_sent_again_as_a_terminate(make_harness: HarnessFactory) -> None:
    """The job starts between DescribeJobs (RUNNABLE) and CancelJob, which then leaves it running (and
    succeeds, as on AWS). The row stays stopping; after resync_interval the stop is sent again, now
    TerminateJob, and the row ends revoked once the job has stopped."""
    h = make_harness(AIRFLOW__AWS_RECONCILER__RESYNC_INTERVAL="60")
    client = h.client()
    backend = h.backend(client=client)
    engine = h.engine(backend=backend)
    [record_id] = h.add()
    cycle(engine)
    job_id = launched_job(h, record_id)
    real_cancel = client.cancel_job

    def cancel_too_late(**kwargs: Any) -> Any:
        h.sandbox.set_job_state(job_id=job_id, status="STARTING")
        return real_cancel(**kwargs)

    client.cancel_job = cancel_too_late
    h.store.revoke(ids=[record_id])
    cycle(engine)
    assert h.row(record_id).phase is Phase.STOPPING
    assert h.job(job_id)["status"] == "STARTING"

    h.clock.advance(59)
    cycle(engine)
    assert (h.calls("CancelJob"), h.calls("TerminateJob")) == (1, 0)
    h.clock.advance(1)
    cycle(engine)
    assert (h.calls("CancelJob"), h.calls("TerminateJob")) == (1, 1)
    assert h.job(job_id)["status"] == "FAILED"
    cycle(engine)
    assert h.row(record_id).phase is Phase.REVOKED


# ---- 6. RUNNABLE timeout ---------------------------------------------------------------------


def test_a_job_stuck_in_runnable_is_stopped_and_its_row_failed_with_the_reason(make_harness: HarnessFactory) -> None:
    """A job RUNNABLE longer than runnable_timeout (since submission) is cancelled and its row failed
    with a reason naming the timeout and Batch's own statusReason, counted as a stop with reason
    runnable_timeout; not a moment before, and never a job that started in time."""
    h = make_harness(AIRFLOW__AWS_RECONCILER_BATCH__RUNNABLE_TIMEOUT="600")
    engine = h.engine()
    stuck, started = h.add(2)
    cycle(engine)
    stuck_job, started_job = launched_job(h, stuck), launched_job(h, started)
    h.sandbox.set_job_state(
        job_id=stuck_job,
        status="RUNNABLE",
        status_reason="CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY - no Fargate capacity in the compute environment",
    )
    h.sandbox.set_job_state(job_id=started_job, status="RUNNING")

    h.clock.advance(590)  # the jobs were submitted (real time) a moment after the fake clock's start
    stats = cycle(engine).stats
    assert (stats.stopped, stats.failed) == (0, 0)
    assert h.row(stuck).phase is Phase.PROVISIONING

    h.clock.advance(15)
    stats = cycle(engine).stats
    assert (stats.stopped, stats.failed) == (1, 1)
    row = h.row(stuck)
    assert row.phase is Phase.FAILED
    assert row.status_reason and "runnable_timeout" in row.status_reason and "(600 s)" in row.status_reason
    assert "CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY" in row.status_reason
    assert (h.calls("CancelJob"), h.calls("TerminateJob")) == (1, 0)
    job = h.job(stuck_job)
    assert (job["status"], job["isCancelled"]) == ("FAILED", True)
    assert "runnable_timeout" in job["statusReason"]
    stops = engine.metrics.registry.get_sample_value(
        "aws_reconciler_stops_total", {"backend": "batch", "reason": "runnable_timeout"}
    )
    assert stops == 1

    h.clock.advance(3600)
    cycle(engine)
    assert h.row(started).phase is Phase.RUNNING, "a running job has no RUNNABLE timeout"
    assert h.row(stuck).phase is Phase.FAILED
    assert (h.calls("SubmitJob"), h.calls("CancelJob")) == (2, 1), "a timed-out job is not submitted again"


def test_runnable_timeout_defaults_to_the_workload_token_lifetime(make_harness: HarnessFactory) -> None:
    """Unset, runnable_timeout is task_queued_timeout: a job starting later could not run its task."""
    h = make_harness(AIRFLOW__AWS_RECONCILER__TASK_QUEUED_TIMEOUT="300")
    engine = h.engine()
    [record_id] = h.add()
    cycle(engine)
    h.clock.advance(290)
    cycle(engine)
    assert h.row(record_id).phase is Phase.PROVISIONING
    h.clock.advance(15)
    cycle(engine)
    row = h.row(record_id)
    assert row.phase is Phase.FAILED
    assert row.status_reason and "(300 s)" in row.status_reason


# ---- 7. orphans ------------------------------------------------------------------------------


def test_orphans_are_stopped_after_the_grace_and_foreign_jobs_never(make_harness: HarnessFactory) -> None:
    """A job with our deployment tag but no open row (or a duplicate of a submitted row) is stopped
    once orphan_grace has passed (CancelJob while it waits, TerminateJob once it runs); jobs of
    another deployment, untagged jobs, jobs in queues we do not watch and our rows' jobs never are."""
    h = make_harness(AIRFLOW__AWS_RECONCILER__RESYNC_INTERVAL="1", AIRFLOW__AWS_RECONCILER__ORPHAN_GRACE="120")
    engine = h.engine()
    [record_id] = h.add()
    cycle(engine)
    ours = launched_job(h, record_id)
    h.sandbox.set_job_state(job_id=ours, status="RUNNING")
    h.create_queue("elsewhere")

    our_tag = {DEPLOYMENT_TAG: DEPLOYMENT}
    waiting_orphan = h.submit_foreign_job(tags={**our_tag, ID_TAG: "lost-record"})
    running_orphan = h.submit_foreign_job(tags={**our_tag, ID_TAG: record_id})  # a duplicate
    h.sandbox.set_job_state(job_id=running_orphan, status="RUNNING")
    keep = {
        "our own row's job": ours,
        "other deployment": h.submit_foreign_job(tags={DEPLOYMENT_TAG: "other", ID_TAG: "x"}),
        "untagged": h.submit_foreign_job(tags=None),
        "a queue we do not watch": h.submit_foreign_job(tags={**our_tag, ID_TAG: "y"}, queue="elsewhere"),
    }

    h.clock.advance(1)
    assert cycle(engine).stats.orphans_stopped == 0  # first seen now
    h.clock.advance(119)
    assert cycle(engine).stats.orphans_stopped == 0
    assert (h.calls("CancelJob"), h.calls("TerminateJob")) == (0, 0)

    h.clock.advance(1)
    assert cycle(engine).stats.orphans_stopped == 2
    assert (h.calls("CancelJob"), h.calls("TerminateJob")) == (1, 1)
    for job_id in (waiting_orphan, running_orphan):
        stopped = h.job(job_id)
        assert stopped["status"] == "FAILED"
        assert "orphan" in stopped["statusReason"]

    for _ in range(2):
        h.clock.advance(3600)
        cycle(engine)
    assert (h.calls("CancelJob"), h.calls("TerminateJob")) == (1, 1)
    for name, job_id in keep.items():
        assert h.job(job_id)["status"] in ("RUNNABLE", "RUNNING"), name
    row = h.row(record_id)
    assert (row.phase, row.external_id) == (Phase.RUNNING, ours)


class _LookupsThrottled:
    """A Batch client whose JOB_NAME lookups are throttled (discovery's status listings are not)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.throttled = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def list_jobs(self, **kwargs: Any) -> Any:
        if self.throttled and kwargs.get("filters"):
            raise ClientError(
                {"Error": {"Code": "TooManyRequestsException", "Message": "Too Many Requests"}}, "ListJobs"
            )
        return self._client.list_jobs(**kwargs)


def test_job_of_a_row_given_back_to_pending_is_not_stopped_as_an_orphan(make_harness: HarnessFactory) -> None:
    """A submit whose answer was lost (500) and whose retry is then throttled leaves the row pending
    while its job waits on Batch. However long that lasts, the orphan sweep must not stop the job:
    the row's next try (same name) finds it."""
    h = make_harness(AIRFLOW__AWS_RECONCILER__RESYNC_INTERVAL="60", AIRFLOW__AWS_RECONCILER__ORPHAN_GRACE="120")
    client = _LookupsThrottled(h.client())
    client.throttled = False
    engine = h.engine(backend=h.backend(client=client))
    [record_id] = h.add()
    h.sandbox.inject_error(operation="SubmitJob", code="ServerException", message="Internal", status=500, phantom=True)
    cycle(engine)
    [job] = h.jobs_of(record_id)

    client.throttled = True
    h.clock.set(h.row(record_id).next_attempt_at or h.clock())
    cycle(engine)  # the retry's lookup is throttled: the attempt is given back
    assert (h.row(record_id).phase, h.row(record_id).attempt) == (Phase.PENDING, 0)
    for _ in range(4):  # throttled for well over orphan_grace, with a discovery every cycle
        h.clock.advance(61)
        cycle(engine)
        assert h.row(record_id).phase is Phase.PENDING
    assert (h.calls("CancelJob"), h.calls("TerminateJob")) == (0, 0)

    client.throttled = False
    h.clock.advance(61)
    cycle(engine)
    assert (h.calls("CancelJob"), h.calls("TerminateJob"), h.calls("SubmitJob")) == (0, 0, 1)
    assert [j["jobId"] for j in h.jobs_of(record_id)] == [job["jobId"]]
    row = h.row(record_id)
    assert (row.phase, row.attempt, row.external_id) == (Phase.PROVISIONING, 1, job["jobId"])


# ---- 8. isolation ----------------------------------------------------------------------------


def test_one_row_whose_submit_raises_never_blocks_the_others(make_harness: HarnessFactory) -> None:
    """Of 20 due rows, one whose launch raises unexpectedly: the 19 others are submitted in the same
    cycle; the bad one is retried later with the SAME attempt (its outcome is unknown) until it works."""
    h = make_harness()
    ids = h.add(20)
    bad = ids[7]
    backend = h.backend()
    real_launch = backend.launch
    broken = {bad}

    def launch(*, record_id: str, attempt: int, spec: Any) -> str:
        if record_id in broken:
            raise RuntimeError("connection pool is full (simulated)")
        return real_launch(record_id=record_id, attempt=attempt, spec=spec)

    backend.launch = launch  # type: ignore[method-assign]
    engine = h.engine(backend=backend)

    stats = cycle(engine).stats
    assert (stats.launched, stats.launch_retries) == (19, 1)
    assert h.calls("SubmitJob") == 19
    row = h.row(bad)
    assert (row.phase, row.attempt, row.external_id) == (Phase.LAUNCHING, 1, None)
    assert row.last_error and "RuntimeError" in row.last_error

    broken.clear()
    h.clock.set(row.next_attempt_at or h.clock())
    assert cycle(engine).stats.launched == 1
    assert (h.row(bad).phase, h.row(bad).attempt) == (Phase.PROVISIONING, 1)
    assert [j["jobName"] for j in h.jobs_of(bad)] == [f"af-{bad}-1"]
    assert len(h.sandbox.jobs()) == 20


def test_one_row_whose_bookkeeping_fails_never_blocks_the_others(
    make_harness: HarnessFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store error while recording one row's observation is contained; the others are recorded in
    the same cycle, and the bad row catches up once the store recovers."""
    h = make_harness()
    ids = h.add(5)
    bad = ids[2]
    engine = h.engine()
    cycle(engine)
    for record_id in ids:
        h.sandbox.set_job_state(job_id=launched_job(h, record_id), status="RUNNING")
    real_transition = h.store.transition

    def transition(record_id: str, **kwargs: Any) -> bool:
        if record_id == bad:
            raise OperationalError("UPDATE aws_reconciler_task", {}, Exception("database is locked"))
        return real_transition(record_id, **kwargs)

    monkeypatch.setattr(h.store, "transition", transition)
    assert cycle(engine).stats.row_errors == 1
    assert [h.row(r).phase for r in ids] == [Phase.RUNNING] * 2 + [Phase.PROVISIONING] + [Phase.RUNNING] * 2
    monkeypatch.undo()
    assert cycle(engine).stats.row_errors == 0
    assert h.row(bad).phase is Phase.RUNNING


# ---- 9. throttling ---------------------------------------------------------------------------


def test_throttled_submits_cost_no_attempt_and_slow_the_cycle(make_harness: HarnessFactory) -> None:
    """SubmitJob refused with TooManyRequestsException for 5 of 10 rows: those go back to pending
    with their attempt given back, the cycle asks to be requeued no sooner than backoff_base, and a
    later cycle submits them all, still as attempt 1."""
    h = make_harness(AIRFLOW__AWS_RECONCILER__RECONCILE_INTERVAL="0.5", AIRFLOW__AWS_RECONCILER__BACKOFF_BASE="2")
    ids = h.add(10)
    engine = h.engine()
    h.sandbox.inject_error(operation="SubmitJob", times=5, **TOO_MANY)

    result = cycle(engine)
    assert (result.stats.throttled, result.stats.launched) == (5, 5)
    assert result.requeue_after >= 2
    throttled = [r for r in ids if h.row(r).phase is Phase.PENDING]
    assert len(throttled) == 5
    for record_id in throttled:
        row = h.row(record_id)
        assert (row.attempt, row.external_id) == (0, None)
        assert row.last_error and "TooManyRequestsException" in row.last_error

    h.clock.advance(300)
    result = cycle(engine)
    assert (result.stats.throttled, result.stats.launched, result.requeue_after) == (0, 5, 0.5)
    for record_id in ids:
        assert (h.row(record_id).phase, h.row(record_id).attempt) == (Phase.PROVISIONING, 1)
        assert [j["jobName"] for j in h.jobs_of(record_id)] == [f"af-{record_id}-1"]
    assert h.calls("SubmitJob") == 15


def _runner(h: Harness, engines: list[Any]) -> Manager:
    core = h.settings.core
    elector = LeaderElector(
        leases=LeaseStore(h.db),
        name=f"reconciler-{DEPLOYMENT}",
        holder="replica-a",
        lease_duration=core.lease_duration,
        renew_deadline=core.renew_deadline,
        retry_period=core.retry_period,
    )
    assert elector.try_once()
    return Manager(
        engines=engines,
        elector=elector,
        waker=Waker(h.db),
        interval=core.reconcile_interval,
        backoff_base=core.backoff_base,
        backoff_max=core.backoff_max,
    )


def test_a_throttled_describe_slows_the_runner_but_submits_go_on(make_harness: HarnessFactory) -> None:
    """DescribeJobs throttled: the cycle does not give up. Rows it could not describe wait, new rows
    are still submitted, the runner counts the trouble and comes back no sooner than backoff_base;
    once Batch answers again the rows catch up."""
    h = make_harness(AIRFLOW__AWS_RECONCILER__BACKOFF_BASE="4", AIRFLOW__AWS_RECONCILER__RECONCILE_INTERVAL="5")
    engine = h.engine()
    runner = _runner(h, [engine])
    [record_id] = h.add()
    try:
        assert runner.cycle() == 5
        job_id = launched_job(h, record_id)
        h.sandbox.set_job_state(job_id=job_id, status="RUNNING")

        h.sandbox.inject_error(operation="DescribeJobs", times=2, **TOO_MANY)
        [fresh] = h.add()
        assert runner.cycle() >= 4
        assert h.row(fresh).phase is Phase.PROVISIONING, "a throttled describe held up a submit"
        assert h.row(record_id).phase is Phase.PROVISIONING, "nothing known of it, nothing decided"
        assert runner.cycle() >= 4
        assert runner.health.consecutive_failures == 2
        assert runner.health.last_error and "TooManyRequestsException" in runner.health.last_error
        assert [e.outcome for e in runner.health.history[-1].errors] == [Outcome.THROTTLED]

        assert runner.cycle() == 5
        assert runner.health.consecutive_failures == 0
        assert h.row(record_id).phase is Phase.RUNNING
    finally:
        runner.waker.close()


# ---- 10. expired workloads, concurrency, fencing ---------------------------------------------


def test_expired_workload_is_failed_not_submitted(make_harness: HarnessFactory) -> None:
    """A row older than task_queued_timeout (its Airflow token has expired) fails with that reason
    and never reaches SubmitJob; a fresh row in the same cycle is still submitted."""
    h = make_harness(AIRFLOW__AWS_RECONCILER__TASK_QUEUED_TIMEOUT="300")
    engine = h.engine()
    [stale] = h.add()
    h.clock.advance(301)
    [fresh] = h.add()

    stats = cycle(engine).stats
    assert (stats.failed, stats.launched) == (1, 1)
    row = h.row(stale)
    assert (row.phase, row.attempt) == (Phase.FAILED, 0)
    assert row.status_reason and "task_queued_timeout" in row.status_reason
    assert h.jobs_of(stale) == []
    assert h.calls("SubmitJob") == 1
    assert h.row(fresh).phase is Phase.PROVISIONING


class _OverlapClient:
    """A Batch client whose ``submit_job`` only proceeds once ``parties`` calls are in flight together."""

    def __init__(self, client: Any, *, parties: int) -> None:
        self._client = client
        self._barrier = threading.Barrier(parties, timeout=20)
        self._lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def submit_job(self, **kwargs: Any) -> Any:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            self._barrier.wait()
            return self._client.submit_job(**kwargs)
        finally:
            with self._lock:
                self.in_flight -= 1


def test_submits_run_concurrently_up_to_launch_concurrency(make_harness: HarnessFactory) -> None:
    """64 due rows with launch_concurrency 16: SubmitJob calls overlap (8 must be in flight at once
    for any to proceed) and never exceed 16."""
    h = make_harness(AIRFLOW__AWS_RECONCILER__LAUNCH_CONCURRENCY="16")
    ids = h.add(64)
    client = _OverlapClient(h.client(), parties=8)
    engine = h.engine(backend=h.backend(client=client))
    assert cycle(engine).stats.launched == 64
    assert 8 <= client.max_in_flight <= 16
    assert all(h.row(r).phase is Phase.PROVISIONING for r in ids)


def test_a_replica_that_is_not_leader_submits_and_stops_nothing(make_harness: HarnessFactory) -> None:
    """Without the lease an engine never calls SubmitJob, CancelJob or TerminateJob (pending rows, a
    revoked running row and a due orphan all wait); a leading engine acts on all three."""
    h = make_harness(AIRFLOW__AWS_RECONCILER__ORPHAN_GRACE="0")
    leader = h.engine()
    [revoked] = h.add()
    cycle(leader)
    h.sandbox.set_job_state(job_id=launched_job(h, revoked), status="RUNNING")
    cycle(leader)
    pending = h.add(3)
    h.store.revoke(ids=[revoked])
    orphan = h.submit_foreign_job(tags={DEPLOYMENT_TAG: DEPLOYMENT, ID_TAG: "lost"})
    submits = h.calls("SubmitJob")

    follower = h.engine(is_leader=lambda: False)
    for _ in range(3):
        h.clock.advance(120)
        stats = cycle(follower).stats
        assert (stats.launched, stats.stopped, stats.orphans_stopped) == (0, 0, 0)
    assert (h.calls("SubmitJob"), h.calls("CancelJob"), h.calls("TerminateJob")) == (submits, 0, 0)
    assert all((h.row(r).phase, h.row(r).attempt) == (Phase.PENDING, 0) for r in pending)
    assert h.row(revoked).phase is Phase.RUNNING
    assert h.job(orphan)["status"] == "RUNNABLE"

    stats = cycle(h.engine()).stats
    assert (stats.launched, stats.stopped, stats.orphans_stopped) == (3, 1, 1)


# ---- 11. Batch as it really behaves: eventual consistency and duplicate jobs --------------------


class _Lagging:
    """A Batch client that shows a job only ``window`` seconds (on the scenario's clock) after it
    was submitted, or never while its id is in ``hidden``: DescribeJobs leaves it out, ListJobs
    (by name or by status) does not list it, as Batch does for a while after SubmitJob."""

    def __init__(self, client: Any, *, clock: Any, window: float = 0.0) -> None:
        self._client = client
        self._clock = clock
        self.window = timedelta(seconds=window)
        self.hidden: set[str] = set()
        self._submitted: dict[str, Any] = {}  # job name -> when submitted

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def _visible(self, job: dict[str, Any]) -> bool:
        if job["jobId"] in self.hidden:
            return False
        submitted = self._submitted.get(job.get("jobName", ""))
        return submitted is None or self._clock() >= submitted + self.window

    def submit_job(self, **kwargs: Any) -> Any:
        self._submitted.setdefault(kwargs["jobName"], self._clock())
        return self._client.submit_job(**kwargs)

    def list_jobs(self, **kwargs: Any) -> Any:
        page = self._client.list_jobs(**kwargs)
        return {**page, "jobSummaryList": [j for j in page.get("jobSummaryList") or [] if self._visible(j)]}

    def describe_jobs(self, **kwargs: Any) -> Any:
        answer = self._client.describe_jobs(**kwargs)
        return {**answer, "jobs": [j for j in answer.get("jobs") or [] if self._visible(j)]}


def test_a_job_absent_right_after_its_submit_is_not_taken_for_gone(make_harness: HarnessFactory) -> None:
    """DescribeJobs leaves a just-submitted job out for a while. Within missing_grace of the submit
    the row stays open and its job is never stopped as an orphan; once Batch shows it the row
    follows it, and a job still unknown after the grace is gone."""
    h = make_harness(
        AIRFLOW__AWS_RECONCILER__RESYNC_INTERVAL="1",
        AIRFLOW__AWS_RECONCILER__ORPHAN_GRACE="10",
        AIRFLOW__AWS_RECONCILER__MISSING_GRACE="60",
    )
    client = _Lagging(h.client(), clock=h.clock)
    engine = h.engine(backend=h.backend(client=client))
    ids = h.add(2)
    assert cycle(engine).stats.launched == 2
    jobs = [launched_job(h, r) for r in ids]
    client.hidden.update(jobs)

    for _ in range(3):
        h.clock.advance(15)
        stats = cycle(engine).stats
        assert (stats.failed, stats.orphans_stopped) == (0, 0)
        assert [h.row(r).phase for r in ids] == [Phase.PROVISIONING] * 2
    assert (h.calls("CancelJob"), h.calls("TerminateJob")) == (0, 0)

    client.hidden.clear()
    for job_id in jobs:
        h.sandbox.set_job_state(job_id=job_id, status="RUNNING")
    cycle(engine)
    assert [h.row(r).phase for r in ids] == [Phase.RUNNING] * 2

    client.hidden.add(jobs[0])
    h.clock.advance(16)  # 61 s after the submit
    assert cycle(engine).stats.failed == 1
    row = h.row(ids[0])
    assert row.phase is Phase.FAILED
    assert row.status_reason and "no longer exists" in row.status_reason


def test_a_lost_submit_is_looked_up_only_once_listjobs_can_list_it(make_harness: HarnessFactory) -> None:
    """SubmitJob created the job but the answer was lost, and ListJobs lists a new job only 8 s
    later. The retry's name lookup waits out lookup_delay (15 s), finds the job and submits
    nothing: one job for the attempt, not two."""
    h = make_harness(AIRFLOW__AWS_RECONCILER__RESYNC_INTERVAL="600", AIRFLOW__AWS_RECONCILER__BACKOFF_BASE="2")
    client = _Lagging(h.client(), clock=h.clock, window=8)
    engine = h.engine(backend=h.backend(client=client), rng=lambda: 1.0)
    [record_id] = h.add()
    h.sandbox.inject_error(operation="SubmitJob", code="ServerException", message="Internal", status=500, phantom=True)
    cycle(engine)
    row = h.row(record_id)
    assert (row.phase, row.attempt) == (Phase.LAUNCHING, 1)
    assert row.next_attempt_at and (row.next_attempt_at - h.clock()).total_seconds() >= 15

    h.clock.advance(2)  # where the backoff alone would have retried
    cycle(engine)
    assert len(h.jobs_of(record_id)) == 1
    h.clock.set(row.next_attempt_at)
    assert cycle(engine).stats.launched == 1
    [job] = h.jobs_of(record_id)
    assert h.calls("SubmitJob") == 1
    row = h.row(record_id)
    assert (row.phase, row.attempt, row.external_id) == (Phase.PROVISIONING, 1, job["jobId"])


def test_of_two_jobs_of_one_row_the_most_advanced_is_kept_and_the_other_stopped(make_harness: HarnessFactory) -> None:
    """Two jobs carry one record id (a lookup that missed a lost submit): the row follows the one
    running the task, the other (still waiting) is cancelled after the orphan grace, the running
    one is never touched, and the row ends with its outcome."""
    h = make_harness(AIRFLOW__AWS_RECONCILER__RESYNC_INTERVAL="1", AIRFLOW__AWS_RECONCILER__ORPHAN_GRACE="120")
    engine = h.engine()
    [record_id] = h.add()
    cycle(engine)
    waiting = launched_job(h, record_id)
    running = h.submit_foreign_job(tags={DEPLOYMENT_TAG: DEPLOYMENT, ID_TAG: record_id}, name=job_name(record_id, 1))
    h.sandbox.set_job_state(job_id=running, status="RUNNING")

    h.clock.advance(1)
    cycle(engine)
    row = h.row(record_id)
    assert (row.phase, row.external_id) == (Phase.RUNNING, running)
    assert (h.calls("CancelJob"), h.calls("TerminateJob")) == (0, 0)

    h.clock.advance(125)
    assert cycle(engine).stats.orphans_stopped == 1
    assert (h.calls("CancelJob"), h.calls("TerminateJob")) == (1, 0)
    assert h.job(waiting)["status"] == "FAILED"
    assert h.job(running)["status"] == "RUNNING"

    h.sandbox.set_job_state(job_id=running, status="SUCCEEDED", exit_code=0)
    h.clock.advance(1)
    cycle(engine)
    assert h.row(record_id).phase is Phase.SUCCEEDED
    assert (h.calls("CancelJob"), h.calls("TerminateJob")) == (1, 0)


# ---- 12. queues chosen per task --------------------------------------------------------------


def test_a_task_may_choose_an_allowed_queue_and_the_reconciler_watches_it(make_harness: HarnessFactory) -> None:
    """executor_config jobQueue from allowed_job_queues: the job is submitted (and looked up) there,
    followed through its lifecycle, and an orphan in that queue is found too."""
    h = make_harness(
        AIRFLOW__AWS_RECONCILER_BATCH__ALLOWED_JOB_QUEUES="spot",
        AIRFLOW__AWS_RECONCILER__ORPHAN_GRACE="0",
    )
    h.create_queue("spot")
    engine = h.engine()
    [record_id] = h.add(executor_config={"jobQueue": "spot"})
    orphan = h.submit_foreign_job(tags={DEPLOYMENT_TAG: DEPLOYMENT, ID_TAG: "lost"}, queue="spot")

    stats = cycle(engine).stats
    assert (stats.launched, stats.orphans_stopped) == (1, 1)
    [job] = h.jobs_of(record_id)
    assert job["jobQueue"].endswith(":job-queue/spot")
    assert h.job(orphan)["status"] == "FAILED"
    h.sandbox.set_job_state(job_id=job["jobId"], status="SUCCEEDED", exit_code=0)
    cycle(engine)
    assert h.row(record_id).phase is Phase.SUCCEEDED
    assert len(h.sandbox.jobs(queue=QUEUE)) == 0
