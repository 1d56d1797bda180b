"""Every Prometheus metric the reconciler exports.

Labels stay low-cardinality on purpose: backend, phase, result, reason, service, operation.
Never a DAG, run, task or record id, and never anything secret.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from .. import __version__

# Queueing and launch latencies span sub-second (warm Fargate) to ~30 min (capacity providers).
LATENCY_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800)
CYCLE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
AWS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# An event's lag is a second or two when all is well; minutes mean the loop or the store lag behind.
EVENT_LAG_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600)


class Metrics:
    """The reconciler's metrics in their own registry (tests create as many as they like)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.tasks = Gauge(
            "aws_reconciler_tasks", "Task records by backend and phase.", ["backend", "phase"], registry=r
        )
        self.oldest_pending = Gauge(
            "aws_reconciler_oldest_pending_seconds",
            "Age of the oldest record waiting for a launch (pending or launching).",
            ["backend"],
            registry=r,
        )
        self.launches = Counter("aws_reconciler_launches", "Launch calls by result.", ["backend", "result"], registry=r)
        self.launch_retries = Counter(
            "aws_reconciler_launch_retries", "Launches to be retried, by reason.", ["backend", "reason"], registry=r
        )
        self.stops = Counter("aws_reconciler_stops", "Stop calls by reason.", ["backend", "reason"], registry=r)
        self.orphans_found = Counter(
            "aws_reconciler_orphans_found",
            "Tasks of this deployment found without an open record.",
            ["backend"],
            registry=r,
        )
        self.queue_to_launch = Histogram(
            "aws_reconciler_queue_to_launch_seconds",
            "From the executor queueing a task instance to AWS accepting the launch.",
            ["backend"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.launch_to_running = Histogram(
            "aws_reconciler_launch_to_running_seconds",
            "From the launch to the container running.",
            ["backend"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.reconciles = Counter("aws_reconciler_reconcile", "Reconcile cycles by result.", ["result"], registry=r)
        self.reconcile_duration = Histogram(
            "aws_reconciler_reconcile_duration_seconds",
            "Duration of one reconcile cycle.",
            buckets=CYCLE_BUCKETS,
            registry=r,
        )
        self.last_reconcile = Gauge(
            "aws_reconciler_last_reconcile_timestamp_seconds", "Unix time of the last successful cycle.", registry=r
        )
        self.aws_requests = Counter(
            "aws_reconciler_aws_requests", "AWS API calls by outcome.", ["service", "operation", "outcome"], registry=r
        )
        self.aws_duration = Histogram(
            "aws_reconciler_aws_request_duration_seconds",
            "AWS API call latency.",
            ["service", "operation"],
            buckets=AWS_BUCKETS,
            registry=r,
        )
        self.aws_throttled = Counter(
            "aws_reconciler_aws_throttled", "AWS API calls refused by throttling.", ["service", "operation"], registry=r
        )

        # Observation by events (EventBridge -> SQS).
        def events(name: str, text: str) -> Counter:
            return Counter(f"aws_reconciler_events_{name}", text, ["backend"], registry=r)

        self.events_received = events("received", "State-change events received from the queue.")
        self.events_applied = events("applied", "Events that told an open task record something new.")
        self.events_stale = events("stale", "Events older than what the task record (or a newer event) says.")
        self.events_duplicate = events("duplicate", "Events that said what the task record already says.")
        self.events_unmatched = events(
            "unmatched", "Events of a task no open record followed within missing_grace (deleted unused)."
        )
        self.events_malformed = events(
            "malformed", "Messages that are not this backend's events (left for the dead-letter queue)."
        )
        self.event_receive_errors = Counter(
            "aws_reconciler_event_receive_errors",
            "Failed receives from (or deletes in) the events queue.",
            ["backend"],
            registry=r,
        )
        self.event_lag = Histogram(
            "aws_reconciler_event_lag_seconds",
            "From AWS emitting a state-change event to its change being committed.",
            ["backend"],
            buckets=EVENT_LAG_BUCKETS,
            registry=r,
        )
        self.resync_drift_total = Counter(
            "aws_reconciler_resync_drift",
            "Task records a resync moved forward that events should have told of (events lost or late).",
            ["backend"],
            registry=r,
        )
        self.last_resync_drift = Gauge(
            "aws_reconciler_last_resync_drift",
            "Task records the last resync corrected (events mode).",
            ["backend"],
            registry=r,
        )
        self.observation_mode = Gauge(
            "aws_reconciler_observation_mode",
            "1 for the active observation mode of a backend.",
            ["backend", "mode"],
            registry=r,
        )
        self.leader = Gauge(
            "aws_reconciler_leader", "1 while this replica is the active reconciler, else 0.", registry=r
        )
        self.build_info = Info("aws_reconciler_build", "Version of the reconciler.", registry=r)
        self.build_info.info({"version": __version__})
