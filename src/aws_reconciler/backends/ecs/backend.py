"""ECS: launch (idempotent RunTask), observe (DescribeTasks), discover (ListTasks by startedBy), stop."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ...model import Backend, Phase
from ..base import Observation, Observed, batched
from ..calls import Caller, always
from ..errors import AwsError, RetriableError, classify_failure_reason
from ..ratelimit import TokenBucket
from .states import observe_task, task_from_event

DESCRIBE_BATCH = 100


def client_token(record_id: str, attempt: int) -> str:
    """RunTask's idempotency key: a retried call for the same attempt returns the same task.

    ECS caps it at 64 characters. Truncating ``<id>-<attempt>`` would cut the attempt off long
    ids and give every attempt the same token (ECS would answer a relaunch with the failed
    task), so a long id is replaced by a digest and the attempt always survives.
    """
    token = f"{record_id}-{attempt}"
    if len(token) <= 64:
        return token
    suffix = f"-{attempt}"
    return hashlib.sha256(record_id.encode()).hexdigest()[: 64 - len(suffix)] + suffix


def is_fargate(spec: Mapping[str, Any]) -> bool:
    """Fargate launches draw on their own account-wide bucket."""
    if spec.get("launchType") == "FARGATE":
        return True
    strategy = spec.get("capacityProviderStrategy") or []
    return any(str(item.get("capacityProvider", "")).startswith("FARGATE") for item in strategy)


class EcsBackend:
    """Talks to ECS for one deployment, within client-side rate limits."""

    kind = Backend.ECS
    # RunTask with the attempt's clientToken returns the task a lost call started: no wait.
    relaunch_delay = 0.0

    def __init__(
        self,
        *,
        client: Any,
        deployment: str,
        clusters: Sequence[str],
        container_name: str,
        run_task_bucket: TokenBucket,
        describe_bucket: TokenBucket,
        fargate_bucket: TokenBucket,
        throttle_pause: float = 1.0,
        may_act: Callable[[], bool] = always,
        team: str | None = None,
    ) -> None:
        self.client = client
        self.deployment = deployment
        # Only tasks tagged with this Airflow team are ours (None: only untagged ones).
        self.team = team
        self.clusters = list(clusters)
        self.container_name = container_name
        self.run_task_bucket = run_task_bucket
        self.describe_bucket = describe_bucket
        self.fargate_bucket = fargate_bucket
        # Fencing: launches and stops are checked against leadership after each token wait.
        self._caller = Caller(throttle_pause=throttle_pause, may_act=may_act)

    @property
    def throttle_pause(self) -> float:
        """Seconds every call of a bucket waits after AWS throttled one."""
        return self._caller.throttle_pause

    @throttle_pause.setter
    def throttle_pause(self, seconds: float) -> None:
        self._caller.throttle_pause = seconds

    def launch_capacity(self, *, within: float) -> int:
        """RunTask calls within the next ``within`` seconds; Fargate's own bucket bounds it too
        (the rows' launch types are not known before their specs are read, so assume Fargate)."""
        return min(self.run_task_bucket.capacity(within), self.fargate_bucket.capacity(within))

    def launch(
        self, *, record_id: str, attempt: int, spec: Mapping[str, Any], in_time: Callable[[], bool] | None = None
    ) -> str:
        """RunTask with ``clientToken`` = ``<id>-<attempt>``; a task in the response wins over
        ``failures`` (AWS can report both when a task did launch). ``in_time``: see ``TaskBackend``."""
        request = dict(spec)
        request["clientToken"] = client_token(record_id, attempt)
        if is_fargate(spec):
            self.fargate_bucket.acquire()
        response = self._caller(self.run_task_bucket, self.client.run_task, mutating=True, in_time=in_time, **request)
        tasks = response.get("tasks") or []
        if tasks:
            return str(tasks[0]["taskArn"])
        failures = response.get("failures") or []
        if failures:
            first = failures[0]
            raise classify_failure_reason(str(first.get("reason", "unknown")), first.get("detail"))
        raise RetriableError("RunTask returned neither a task nor a failure")

    def observe(self, *, targets: Mapping[str, str | None]) -> Observed:
        """DescribeTasks per cluster, 100 ARNs a call. Unknown ARNs come back ``missing``; a batch
        that fails is reported in ``errors`` and the next batches are still described."""
        by_cluster: dict[str, list[str]] = defaultdict(list)
        for arn, cluster in targets.items():
            by_cluster[cluster or self.clusters[0]].append(arn)
        found: dict[str, Observation] = {}
        errors: list[AwsError] = []
        for cluster, arns in by_cluster.items():
            for batch in batched(arns, DESCRIBE_BATCH):
                try:
                    response = self._caller(
                        self.describe_bucket, self.client.describe_tasks, cluster=cluster, tasks=list(batch)
                    )
                except AwsError as exc:
                    errors.append(exc)
                    continue
                for task in response.get("tasks") or []:
                    obs = observe_task(
                        task, container_name=self.container_name, deployment=self.deployment, team=self.team
                    )
                    found[obs.external_id] = obs
                for failure in response.get("failures") or []:
                    arn = failure.get("arn")
                    if arn and arn not in found and failure.get("reason") == "MISSING":
                        found[arn] = Observation(
                            external_id=arn,
                            target=cluster,
                            phase=Phase.FAILED,
                            missing=True,
                            reason="the ECS task no longer exists (MISSING)",
                        )
        return Observed(found, tuple(errors))

    def discover(self) -> list[Observation]:
        """ListTasks by ``startedBy`` (which must be the only filter), then DescribeTasks with tags."""
        found: list[Observation] = []
        for cluster in self.clusters:
            arns: list[str] = []
            token: str | None = None
            while True:
                kwargs: dict[str, Any] = {"cluster": cluster, "startedBy": self.deployment, "maxResults": 100}
                if token:
                    kwargs["nextToken"] = token
                page = self._caller(self.describe_bucket, self.client.list_tasks, **kwargs)
                arns.extend(page.get("taskArns") or [])
                token = page.get("nextToken")
                if not token:
                    break
            for batch in batched(arns, DESCRIBE_BATCH):
                response = self._caller(
                    self.describe_bucket,
                    self.client.describe_tasks,
                    cluster=cluster,
                    tasks=list(batch),
                    include=["TAGS"],
                )
                for task in response.get("tasks") or []:
                    found.append(
                        observe_task(
                            task, container_name=self.container_name, deployment=self.deployment, team=self.team
                        )
                    )
        return found

    def observe_event(self, detail: Mapping[str, Any]) -> Observation:
        """An "ECS Task State Change" event's task, read as DescribeTasks' answer would be. The event
        carries no tags (ECS does not send them), so it never proves ownership: it only tells of a
        task a row already follows."""
        return observe_task(
            task_from_event(detail), container_name=self.container_name, deployment=self.deployment, team=self.team
        )

    def stop(self, *, external_id: str, target: str | None, reason: str) -> None:
        """StopTask with a reason ECS shows in the console (<= 255 characters)."""
        self._caller(
            self.run_task_bucket,
            self.client.stop_task,
            mutating=True,
            cluster=target or self.clusters[0],
            task=external_id,
            reason=reason[:255],
        )
