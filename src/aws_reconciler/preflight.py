"""``aws-reconciler check``: does this identity have every permission the reconciler needs?

Each probe calls a real API in a way that changes nothing: read-only calls, or mutating calls
aimed at resources that cannot exist (a task ARN of zeros) or with a parameter AWS rejects only
*after* authorising the caller. So "AccessDenied" means the permission is missing, and any other
answer from AWS means it is granted. No answer at all (no endpoint, no credentials) proves
nothing either way: that is plumbing, reported once (``sts:GetCallerIdentity`` first) and apart
from permissions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from botocore.exceptions import ClientError

from .backends.descriptor import Probe
from .backends.errors import classify
from .backends.events import queue_probes
from .backends.registry import enabled
from .config import Settings

DENIED_CODES = frozenset(
    {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "403", "UnrecognizedClientException"}
)


Status = Literal["ok", "missing", "error"]


@dataclass(frozen=True)
class CheckResult:
    """One permission and what AWS said about it: ``ok``, ``missing`` (denied) or ``error`` (no answer)."""

    permission: str
    status: Status
    detail: str

    @property
    def ok(self) -> bool:
        """The permission is proven."""
        return self.status == "ok"

    def as_dict(self) -> dict[str, str]:
        """For ``--json``."""
        return {"permission": self.permission, "status": self.status, "detail": self.detail}


def run_probe(probe: Probe) -> CheckResult:
    """Run one probe; success or an error other than access denied proves the permission."""
    try:
        probe.call()
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        message = str(exc.response.get("Error", {}).get("Message", ""))
        if code in DENIED_CODES or "not authorized" in message.lower():
            return CheckResult(probe.permission, "missing", f"{code}: {message}")
        return CheckResult(probe.permission, "ok", f"allowed ({code})")
    except Exception as exc:
        return CheckResult(probe.permission, "error", classify(exc).reason)
    return CheckResult(probe.permission, "ok", "allowed")


@dataclass(frozen=True)
class Identity:
    """Who ``check`` checked, and where; ``ok`` False when AWS could not be asked at all."""

    ok: bool
    detail: str
    arn: str | None = None
    account: str | None = None
    region: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """For ``--json``."""
        return {"ok": self.ok, "detail": self.detail, "arn": self.arn, "account": self.account, "region": self.region}


def caller_identity(settings: Settings, make_client: Callable[..., Any]) -> Identity:
    """``sts:GetCallerIdentity`` in the first configured backend's region: needs no permission, so
    a failure means no credentials or no way to AWS, which no permission probe could tell apart."""
    descriptors = enabled(settings)
    region = descriptors[0].settings_of(settings).region_name if descriptors else None
    try:
        client = make_client("sts", region_name=region)
        answer = client.get_caller_identity()
    except Exception as exc:
        failure = classify(exc)
        kind = "no AWS credentials" if "credentials" in failure.reason.lower() else "cannot reach AWS"
        return Identity(ok=False, detail=f"{kind}: {failure.reason}", region=region)
    return Identity(
        ok=True,
        detail="reached",
        arn=str(answer.get("Arn")),
        account=str(answer.get("Account")),
        region=region or getattr(client.meta, "region_name", None),
    )


def check_store(settings: Settings) -> CheckResult:
    """The task store answers and its schema is current (``check --store``)."""
    from .config import redact_url
    from .store.database import create_store_engine
    from .store.migrate import SchemaNotReadyError, check_schema
    from .store.trouble import classify_store_error

    label = redact_url(settings.store_url)
    try:
        check_schema(create_store_engine(settings.store_url))
    except SchemaNotReadyError as exc:
        return CheckResult("task store", "missing", str(exc))
    except Exception as exc:
        trouble = classify_store_error(exc, label=label)
        if trouble is None:
            raise
        return CheckResult("task store", "error", str(trouble))
    return CheckResult("task store", "ok", f"{label}: schema is current")


def check_backends(settings: Settings, client_for: Callable[..., Any]) -> list[CheckResult]:
    """Probe every permission of every configured backend; ``client_for(descriptor)`` makes each
    backend's client, ``client_for(descriptor, "sqs")`` the client of its events queue."""
    results: list[CheckResult] = []
    for descriptor in enabled(settings):
        results += [run_probe(probe) for probe in descriptor.probes(settings, client_for(descriptor))]
        section = descriptor.settings_of(settings)
        if section.observation == "events" and section.events_queue_url:
            sqs = client_for(descriptor, "sqs")
            results += [run_probe(probe) for probe in queue_probes(section.events_queue_url, sqs)]
    return results


def render(results: list[CheckResult]) -> str:
    """A table for humans: one line per permission."""
    width = max((len(r.permission) for r in results), default=10)
    lines = [f"{r.status if r.ok else r.status.upper():<8} {r.permission:<{width}}  {r.detail}" for r in results]
    lines.append(
        "note: iam:PassRole (task and execution roles) and ecs:TagResource on RunTask are only checked by a real launch"
    )
    return "\n".join(lines)
