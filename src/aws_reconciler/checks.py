"""``aws-reconciler check``: does this identity have every permission the reconciler needs?

Each probe calls a real API in a way that changes nothing: read-only calls, or mutating calls
aimed at resources that cannot exist (a task ARN of zeros) or with a parameter AWS rejects only
*after* authorising the caller. So "AccessDenied" means the permission is missing, and any other
answer means it is granted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from .backends.descriptor import BackendDescriptor, Probe
from .backends.errors import classify
from .backends.registry import enabled
from .config import Settings

DENIED_CODES = frozenset(
    {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "403", "UnrecognizedClientException"}
)


@dataclass(frozen=True)
class CheckResult:
    """One permission and what AWS said about it."""

    permission: str
    ok: bool
    detail: str


def run_probe(probe: Probe) -> CheckResult:
    """Run one probe; success or an error other than access denied proves the permission."""
    try:
        probe.call()
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        message = str(exc.response.get("Error", {}).get("Message", ""))
        if code in DENIED_CODES or "not authorized" in message.lower():
            return CheckResult(probe.permission, False, f"{code}: {message}")
        return CheckResult(probe.permission, True, f"allowed ({code})")
    except Exception as exc:
        return CheckResult(probe.permission, False, classify(exc).reason)
    return CheckResult(probe.permission, True, "allowed")


def check_backends(settings: Settings, client_for: Callable[[BackendDescriptor], Any]) -> list[CheckResult]:
    """Probe every permission of every configured backend; ``client_for`` makes each backend's client."""
    results: list[CheckResult] = []
    for descriptor in enabled(settings):
        results += [run_probe(probe) for probe in descriptor.probes(settings, client_for(descriptor))]
    return results


def render(results: list[CheckResult]) -> str:
    """A table for humans: one line per permission."""
    width = max((len(r.permission) for r in results), default=10)
    lines = [f"{'ok' if r.ok else 'MISSING':<8} {r.permission:<{width}}  {r.detail}" for r in results]
    lines.append(
        "note: iam:PassRole (task and execution roles) and ecs:TagResource on RunTask are only checked by a real launch"
    )
    return "\n".join(lines)
