"""Scenarios of the reconciler only AWS Batch has: no client token (a JOB_NAME lookup before each
submit, trusted only after lookup_delay), CancelJob that may not take, the RUNNABLE timeout, queues
chosen per task. Everything both backends do is in ``test_scenarios.py``."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from aws_reconciler.backends.batch.spec import job_name
from aws_reconciler.backends.tags import DEPLOYMENT_TAG, ID_TAG
from aws_reconciler.model import Phase
from support.world import DEPLOYMENT, QUEUE, BatchAdapter, LaggingBatch, World, only, polling_only

pytestmark = only("batch")


def test_a_submit_looks_its_name_up_first_and_the_name_is_per_attempt(world: World) -> None:
    """Each submit is preceded by a JOB_NAME lookup; the job waits RUNNABLE, and its name (per
    attempt) is not in the stored request."""
    w = world
    ids = w.add(2)
    assert w.engine().reconcile().stats.launched == 2
    assert (w.calls("ListJobs"), w.calls("SubmitJob")) == (2 + 5, 2)  # 2 lookups, 5 statuses discovered
    for record_id in ids:
        [job] = w.launched_of(record_id)
        assert job.raw["status"] == "RUNNABLE"
        assert "jobName" not in w.store.specs([record_id])[record_id]


def test_crash_after_submit_is_recovered_by_the_job_name_when_discovery_misses_it(world: World) -> None:
    """Batch has no client token. Even when discovery cannot see the lost job, relaunching the
    launching row (same attempt) first looks its name up and takes the job Batch already has; the
    lookup waits out lookup_delay after the claim, since ListJobs may not list a new job at once."""
    w = world
    [record_id] = w.add()
    job, second = w.crash_after_launch(record_id)
    w.sandbox.reset_calls()
    second.reconcile()
    assert (w.calls("ListJobs"), w.calls("SubmitJob")) == (0, 0), "looked up before ListJobs could list it"
    assert w.row(record_id).phase is Phase.LAUNCHING

    w.clock.advance(w.settings.batch.lookup_delay)
    second.reconcile()
    assert (w.calls("ListJobs"), w.calls("SubmitJob")) == (1, 0)
    assert [j.id for j in w.launched_of(record_id)] == [job.id]
    row = w.row(record_id)
    assert (row.phase, row.attempt, row.external_id) == (Phase.PROVISIONING, 1, job.id)


def test_an_ambiguous_submit_error_is_retried_with_the_same_name_after_backoff(world: World) -> None:
    """A 5xx (not known to have created anything) twice: the row stays launching with attempt 1, is
    not retried before its delay (at least lookup_delay, and growing though the attempt stays),
    then submits once, under the same name af-<id>-1."""
    w = world.configure(AIRFLOW__AWS_RECONCILER__BACKOFF_BASE="2", AIRFLOW__AWS_RECONCILER_BATCH__LOOKUP_DELAY="3")
    # Full jitter: the lookup delay (3 s) beats the first backoff (2 s); the next is 4 x 3 s.
    engine = w.engine(rng=lambda: 1.0)
    [record_id] = w.add()
    w.inject("launch", code="ServerException", message="Internal", status=500, times=2)

    for tries, delay in ((1, 3), (2, 12)):
        assert engine.reconcile().stats.launch_retries == 1
        row = w.row(record_id)
        assert (row.phase, row.attempt, row.external_id) == (Phase.LAUNCHING, 1, None)
        assert row.next_attempt_at == w.clock() + timedelta(seconds=delay)
        w.clock.set(row.next_attempt_at - timedelta(milliseconds=1))
        engine.reconcile()
        assert w.calls("SubmitJob") == tries, "retried before the backoff elapsed"
        w.clock.set(row.next_attempt_at)

    assert engine.reconcile().stats.launched == 1
    row = w.row(record_id)
    assert (row.phase, row.attempt, row.last_error) == (Phase.PROVISIONING, 1, None)
    [job] = w.launched_of(record_id)
    assert (job.id, job.key) == (row.external_id, job_name(record_id, 1))


def test_a_job_cancelled_by_someone_else_is_not_resubmitted(world: World) -> None:
    """Only positive evidence of a start failure resubmits: a job cancelled by somebody else (no exit
    code, no start failure) fails the row."""
    w = world
    engine = w.engine()
    [record_id] = w.add()
    engine.reconcile()
    w.sandbox.set_job_state(job_id=w.external_id(record_id), status="FAILED", status_reason="Cancelled by an operator")
    engine.reconcile()
    w.clock.advance(3600)
    engine.reconcile()
    row = w.row(record_id)
    assert (row.phase, row.attempt, row.exit_code) == (Phase.FAILED, 1, None)
    assert w.calls("SubmitJob") == 1


def test_a_cancel_that_did_not_take_is_sent_again_as_a_terminate(world: World) -> None:
    """The job starts between DescribeJobs (RUNNABLE) and CancelJob, which then leaves it running (and
    succeeds, as on AWS). The row stays stopping; after resync_interval the stop is sent again, now
    TerminateJob, and the row ends revoked once the job has stopped."""
    w = world.configure(AIRFLOW__AWS_RECONCILER__RESYNC_INTERVAL="60")
    [record_id] = w.add()
    job_id: list[str] = []

    def cancel_too_late(call: Any, **kwargs: Any) -> Any:
        w.sandbox.set_job_state(job_id=job_id[0], status="STARTING")
        return call(**kwargs)

    engine = w.engine(backend=w.backend(client=w.intercept("cancel_job", cancel_too_late)))
    engine.reconcile()
    job_id.append(w.external_id(record_id))
    w.store.revoke(ids=[record_id])
    engine.reconcile()
    assert w.row(record_id).phase is Phase.STOPPING
    assert w.launched(job_id[0]).raw["status"] == "STARTING"

    w.clock.advance(59)
    engine.reconcile()
    assert w.stop_calls() == {"CancelJob": 1}
    w.clock.advance(1)
    engine.reconcile()
    assert w.stop_calls() == {"CancelJob": 1, "TerminateJob": 1}
    assert w.launched(job_id[0]).raw["status"] == "FAILED"
    engine.reconcile()
    assert w.row(record_id).phase is Phase.REVOKED


# ---- the RUNNABLE timeout --------------------------------------------------------------------


@polling_only()
def test_a_job_stuck_in_runnable_is_stopped_and_its_row_failed_with_the_reason(world: World) -> None:
    """A job RUNNABLE longer than runnable_timeout (since submission) is cancelled and its row failed
    with a reason naming the timeout and Batch's own statusReason, counted as a stop with reason
    runnable_timeout; not a moment before, and never a job that started in time."""
    w = world.configure(AIRFLOW__AWS_RECONCILER_BATCH__RUNNABLE_TIMEOUT="600")
    engine = w.engine()
    stuck, started = w.add(2)
    engine.reconcile()
    stuck_job, started_job = w.external_id(stuck), w.external_id(started)
    w.sandbox.set_job_state(
        job_id=stuck_job,
        status="RUNNABLE",
        status_reason="CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY - no Fargate capacity in the compute environment",
    )
    w.set_running(started_job)

    w.clock.advance(590)  # the jobs were submitted (real time) a moment after the fake clock's start
    stats = engine.reconcile().stats
    assert (stats.stopped, stats.failed) == (0, 0)
    assert w.row(stuck).phase is Phase.PROVISIONING

    w.clock.advance(15)
    stats = engine.reconcile().stats
    assert (stats.stopped, stats.failed) == (1, 1)
    row = w.row(stuck)
    assert row.phase is Phase.FAILED
    assert row.status_reason and "runnable_timeout" in row.status_reason and "(600 s)" in row.status_reason
    assert "CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY" in row.status_reason
    assert w.stop_calls() == {"CancelJob": 1}
    job = w.launched(stuck_job)
    assert job.stopped_by == "CancelJob"
    assert "runnable_timeout" in job.reason
    stops = engine.metrics.registry.get_sample_value(
        "aws_reconciler_stops_total", {"backend": "batch", "reason": "runnable_timeout"}
    )
    assert stops == 1

    w.clock.advance(3600)
    engine.reconcile()
    assert w.row(started).phase is Phase.RUNNING, "a running job has no RUNNABLE timeout"
    assert w.row(stuck).phase is Phase.FAILED
    assert (w.calls("SubmitJob"), w.stop_calls()) == (2, {"CancelJob": 1}), "a timed-out job is not submitted again"


@polling_only()
def test_runnable_timeout_defaults_to_the_workload_token_lifetime(world: World) -> None:
    """Unset, runnable_timeout is task_queued_timeout: a job starting later could not run its task."""
    w = world.configure(AIRFLOW__AWS_RECONCILER__TASK_QUEUED_TIMEOUT="300")
    engine = w.engine()
    [record_id] = w.add()
    engine.reconcile()
    w.clock.advance(290)
    engine.reconcile()
    assert w.row(record_id).phase is Phase.PROVISIONING
    w.clock.advance(15)
    engine.reconcile()
    row = w.row(record_id)
    assert row.phase is Phase.FAILED
    assert row.status_reason and "(300 s)" in row.status_reason


# ---- Batch as it really behaves: lookups that lag, duplicate jobs ------------------------------


def test_a_lost_submit_is_looked_up_only_once_listjobs_can_list_it(world: World) -> None:
    """SubmitJob created the job but the answer was lost, and ListJobs lists a new job only 8 s
    later. The retry's name lookup waits out lookup_delay (15 s), finds the job and submits
    nothing: one job for the attempt, not two."""
    w = world.configure(AIRFLOW__AWS_RECONCILER__RESYNC_INTERVAL="600", AIRFLOW__AWS_RECONCILER__BACKOFF_BASE="2")
    client = LaggingBatch(w.client(), clock=w.clock, window=8)
    engine = w.engine(backend=w.backend(client=client), rng=lambda: 1.0)
    [record_id] = w.add()
    w.inject("launch", code="ServerException", message="Internal", status=500, phantom=True)
    engine.reconcile()
    row = w.row(record_id)
    assert (row.phase, row.attempt) == (Phase.LAUNCHING, 1)
    assert row.next_attempt_at and (row.next_attempt_at - w.clock()).total_seconds() >= 15

    w.clock.advance(2)  # where the backoff alone would have retried
    engine.reconcile()
    assert len(w.launched_of(record_id)) == 1
    w.clock.set(row.next_attempt_at)
    assert engine.reconcile().stats.launched == 1
    [job] = w.launched_of(record_id)
    assert w.calls("SubmitJob") == 1
    row = w.row(record_id)
    assert (row.phase, row.attempt, row.external_id) == (Phase.PROVISIONING, 1, job.id)


def test_of_two_jobs_of_one_row_the_most_advanced_is_kept_and_the_other_stopped(world: World) -> None:
    """Two jobs carry one record id (a lookup that missed a lost submit): the row follows the one
    running the task, the other (still waiting) is cancelled after the orphan grace, the running
    one is never touched, and the row ends with its outcome."""
    w = world.configure(AIRFLOW__AWS_RECONCILER__RESYNC_INTERVAL="1", AIRFLOW__AWS_RECONCILER__ORPHAN_GRACE="120")
    engine = w.engine()
    [record_id] = w.add()
    engine.reconcile()
    waiting = w.external_id(record_id)
    tags = {DEPLOYMENT_TAG: DEPLOYMENT, ID_TAG: record_id}
    running = w.start_foreign(tags=tags, name=job_name(record_id, 1))
    w.set_running(running)

    w.clock.advance(1)
    engine.reconcile()
    row = w.row(record_id)
    assert (row.phase, row.external_id) == (Phase.RUNNING, running)
    assert w.stop_calls() == {}

    w.clock.advance(125)
    assert engine.reconcile().stats.orphans_stopped == 1
    assert w.stop_calls() == {"CancelJob": 1}
    assert w.launched(waiting).stopped_by == "CancelJob"
    assert w.launched(running).raw["status"] == "RUNNING"

    w.set_exited(running, 0)
    w.clock.advance(1)
    engine.reconcile()
    assert w.row(record_id).phase is Phase.SUCCEEDED
    assert w.stop_calls() == {"CancelJob": 1}


def test_a_task_may_choose_an_allowed_queue_and_the_reconciler_watches_it(world: World) -> None:
    """executor_config jobQueue from allowed_job_queues: the job is submitted (and looked up) there,
    followed through its lifecycle, and an orphan in that queue is found too."""
    w = world.configure(
        AIRFLOW__AWS_RECONCILER_BATCH__ALLOWED_JOB_QUEUES="spot",
        AIRFLOW__AWS_RECONCILER__ORPHAN_GRACE="0",
    )
    BatchAdapter.create_queue(w, "spot")
    engine = w.engine()
    [record_id] = w.add(executor_config={"jobQueue": "spot"})
    orphan = w.start_foreign(tags={DEPLOYMENT_TAG: DEPLOYMENT, ID_TAG: "lost"}, queue="spot")

    stats = engine.reconcile().stats
    assert (stats.launched, stats.orphans_stopped) == (1, 1)
    [job] = w.launched_of(record_id)
    assert job.raw["jobQueue"].endswith(":job-queue/spot")
    assert w.launched(orphan).stopped_by == "CancelJob"
    w.set_exited(job.id, 0)
    engine.reconcile()
    assert w.row(record_id).phase is Phase.SUCCEEDED
    assert len(w.sandbox.jobs(queue=QUEUE)) == 0
