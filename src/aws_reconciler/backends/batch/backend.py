"""AWS Batch: launch (SubmitJob after a JOB_NAME lookup), observe (DescribeJobs), discover
(ListJobs per queue and active status), stop (CancelJob / TerminateJob)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from ...model import Backend, Phase
from ..base import Observation, Observed, batched
from ..calls import Caller, always
from ..errors import AwsError
from ..ratelimit import TokenBucket
from .spec import job_name
from .states import ACTIVE_STATUSES, CANCELLABLE_STATUSES, observe_job

DESCRIBE_BATCH = 100  # DescribeJobs takes at most 100 ids
LIST_PAGE = 1000  # ListJobs pages by status hold at most 1,000 jobs...
FILTERED_PAGE = 100  # ...and at most 100 with a filter
MAX_REASON = 1024  # CancelJob / TerminateJob reason limit


def _utcnow() -> datetime:
    return datetime.now(UTC)


class BatchBackend:
    """Talks to AWS Batch for one deployment, within client-side rate limits."""

    kind = Backend.BATCH

    def __init__(
        self,
        *,
        client: Any,
        deployment: str,
        job_queues: Sequence[str],
        submit_bucket: TokenBucket,
        describe_bucket: TokenBucket,
        runnable_timeout: float | None = None,
        clock: Callable[[], datetime] | None = None,
        throttle_pause: float = 1.0,
        may_act: Callable[[], bool] = always,
        lookup_delay: float = 15.0,
        team: str | None = None,
    ) -> None:
        self.client = client
        self.deployment = deployment
        # Only jobs tagged with this Airflow team are ours (None: only untagged ones).
        self.team = team
        self.job_queues = list(job_queues)
        self.submit_bucket = submit_bucket
        self.describe_bucket = describe_bucket
        self.runnable_timeout = runnable_timeout
        # ListJobs may not list a job submitted moments ago: a lookup of a name that may have been
        # submitted is trusted only this long after the submit (see launch()).
        self.relaunch_delay = lookup_delay
        # For the RUNNABLE timeout; the engine's clock in tests.
        self.clock = clock or _utcnow
        # Fencing: launches and stops are checked against leadership after each token wait.
        self._caller = Caller(throttle_pause=throttle_pause, may_act=may_act)
        self.list_page = LIST_PAGE
        # Last status seen of our open jobs: picks CancelJob or TerminateJob in stop(). Only a
        # hint (a job may have started since): without one, TerminateJob, which also cancels.
        self._statuses: dict[str, str] = {}

    @property
    def throttle_pause(self) -> float:
        """Seconds every call of a bucket waits after AWS throttled one."""
        return self._caller.throttle_pause

    @throttle_pause.setter
    def throttle_pause(self, seconds: float) -> None:
        self._caller.throttle_pause = seconds

    def launch_capacity(self, *, within: float) -> int:
        """Submits within the next ``within`` seconds: each costs a SubmitJob and a ListJobs lookup."""
        return min(self.submit_bucket.capacity(within), self.describe_bucket.capacity(within))

    def launch(
        self, *, record_id: str, attempt: int, spec: Mapping[str, Any], in_time: Callable[[], bool] | None = None
    ) -> str:
        """SubmitJob named ``af-<id>-<attempt>``, unless a job of that name is already in the queue.

        Batch has no client token. The engine calls this for every claimed attempt, and a claimed
        attempt may have reached Batch before a crash or a lost answer, so the name is looked up
        first (ListJobs' JOB_NAME filter). The engine relaunches such an attempt only
        ``relaunch_delay`` after it may have been sent, once ListJobs can be expected to list it;
        should a second job slip through anyway, the engine keeps the most advanced and stops the
        other. ``in_time`` is checked before the SubmitJob only: a job found is taken whatever the time.
        """
        name = job_name(record_id, attempt)
        queue = str(spec["jobQueue"])
        existing = self.find_job(queue=queue, name=name)
        if existing is not None:
            return existing
        response = self._caller(
            self.submit_bucket, self.client.submit_job, mutating=True, in_time=in_time, **{**spec, "jobName": name}
        )
        return str(response["jobId"])

    def find_job(self, *, queue: str, name: str) -> str | None:
        """The id of the job called ``name`` in ``queue`` (any status), oldest first; None if none."""
        found: list[tuple[int, str]] = []
        lookup = {"jobQueue": queue, "filters": [{"name": "JOB_NAME", "values": [name]}]}
        for summary in self._list(page_size=min(self.list_page, FILTERED_PAGE), **lookup):
            # The filter is case-insensitive (and '*' would be a prefix match): compare exactly.
            if summary.get("jobName") == name:
                found.append((int(summary.get("createdAt") or 0), str(summary["jobId"])))
        return min(found)[1] if found else None

    def _list(self, *, page_size: int, **kwargs: Any) -> Iterator[dict[str, Any]]:
        token: str | None = None
        while True:
            page_args = {**kwargs, "maxResults": page_size}
            if token:
                page_args["nextToken"] = token
            page = self._caller(self.describe_bucket, self.client.list_jobs, **page_args)
            yield from page.get("jobSummaryList") or []
            token = page.get("nextToken")
            if not token:
                return

    # ---- observe / discover ---------------------------------------------------------------

    def _describe(self, ids: Sequence[str]) -> list[Observation]:
        """DescribeJobs for every id; the first failed batch raises."""
        observations, _answered, errors = self._describe_batches(ids)
        if errors:
            raise errors[0]
        return observations

    def _describe_batches(self, ids: Sequence[str]) -> tuple[list[Observation], set[str], list[AwsError]]:
        """DescribeJobs 100 ids a call: observations, the ids of the batches answered, the errors."""
        now = self.clock()
        observations: list[Observation] = []
        answered: set[str] = set()
        errors: list[AwsError] = []
        for batch in batched(ids, DESCRIBE_BATCH):
            try:
                response = self._caller(self.describe_bucket, self.client.describe_jobs, jobs=list(batch))
            except AwsError as exc:
                errors.append(exc)
                continue
            answered.update(batch)
            for job in response.get("jobs") or []:
                obs = observe_job(
                    job, deployment=self.deployment, runnable_timeout=self.runnable_timeout, now=now, team=self.team
                )
                observations.append(obs)
                self._remember(obs)
        return observations, answered, errors

    def _remember(self, obs: Observation) -> None:
        if not obs.owned or obs.phase.terminal:
            self._statuses.pop(obs.external_id, None)
        elif obs.raw_status:
            self._statuses[obs.external_id] = obs.raw_status

    def observe(self, *, targets: Mapping[str, str | None]) -> Observed:
        """DescribeJobs, 100 ids a call. Ids of an answered batch Batch does not know come back
        ``missing``; a batch that fails is reported in ``errors`` and says nothing of its ids."""
        observations, answered, errors = self._describe_batches(list(targets))
        found = {obs.external_id: obs for obs in observations}
        for job_id, queue in targets.items():
            if job_id in answered and job_id not in found:
                self._statuses.pop(job_id, None)
                found[job_id] = Observation(
                    external_id=job_id,
                    target=queue,
                    phase=Phase.FAILED,
                    missing=True,
                    reason="the Batch job no longer exists (DescribeJobs does not know it)",
                )
        return Observed(found, tuple(errors))

    def discover(self) -> list[Observation]:
        """ListJobs per job queue and active status (Batch lists one status at a time), then
        DescribeJobs for the tags, which ListJobs does not return."""
        ids: dict[str, None] = {}  # ordered and without duplicates: a job may change status mid-listing
        for queue in self.job_queues:
            for status in ACTIVE_STATUSES:
                for summary in self._list(page_size=self.list_page, jobQueue=queue, jobStatus=status):
                    ids[str(summary["jobId"])] = None
        return self._describe(list(ids))

    def observe_event(self, detail: Mapping[str, Any]) -> Observation:
        """A "Batch Job State Change" event's job: the same shape as DescribeJobs' (epoch-millisecond
        times, tags included), read the same way."""
        if not isinstance(detail.get("jobId"), str):
            raise ValueError("not a Batch job state change: no jobId in detail")
        obs = observe_job(
            detail, deployment=self.deployment, runnable_timeout=self.runnable_timeout, now=self.clock(), team=self.team
        )
        self._remember(obs)
        return obs

    # ---- stop -----------------------------------------------------------------------------

    def stop(self, *, external_id: str, target: str | None, reason: str) -> None:
        """CancelJob for a job not started yet, TerminateJob otherwise.

        CancelJob leaves a job that has meanwhile reached STARTING alone (and still succeeds);
        the engine sends the stop again while the row stays ``stopping``.
        """
        # Kept, not taken: a stop refused is sent again, maybe with no describe in between (events mode).
        status = self._statuses.get(external_id)
        operation = self.client.cancel_job if status in CANCELLABLE_STATUSES else self.client.terminate_job
        self._caller(self.submit_bucket, operation, mutating=True, jobId=external_id, reason=reason[:MAX_REASON])
