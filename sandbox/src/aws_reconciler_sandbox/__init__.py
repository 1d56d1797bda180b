"""Embedded fake AWS for the demo and the tests: moto behind a lock, with fidelity shims.

``SandboxServer`` serves it over HTTP on 127.0.0.1; ``bootstrap`` creates the resources the
executor needs there; ``SandboxControlClient`` drives a sandbox running in another process with
the same control operations as ``SandboxServer`` (a ``Sandbox``). ``SandboxServer(run_tasks=True)``
also runs each ECS task's and Batch job's container command as a local process (``RunnerOptions``
tunes it); ``RealismSettings`` and the profiles make it as unkind as AWS; ``provision_event_queue``
creates the SQS queue and EventBridge rules that receive the ECS and Batch state-change events
the sandbox emits; ``run_sandbox`` is the ``aws-reconciler sandbox`` command.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import Sandbox
    from .cli import add_sandbox_parser, run_sandbox
    from .control import SandboxControlClient, SandboxControlError
    from .events import provision_event_queue
    from .realism import PROFILES, RealismSettings
    from .resources import bootstrap
    from .runner import RunnerOptions
    from .server import FAKE_CREDENTIALS, SandboxServer

# Loaded on first use: the product's CLI imports ``.cli`` through an entry point to build its
# parser, and that must not import moto.
_HOMES = {
    "FAKE_CREDENTIALS": "server",
    "PROFILES": "realism",
    "RealismSettings": "realism",
    "RunnerOptions": "runner",
    "Sandbox": "app",
    "SandboxControlClient": "control",
    "SandboxControlError": "control",
    "SandboxServer": "server",
    "add_sandbox_parser": "cli",
    "bootstrap": "resources",
    "provision_event_queue": "events",
    "run_sandbox": "cli",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{home}", __name__), name)


__all__ = [
    "FAKE_CREDENTIALS",
    "PROFILES",
    "RealismSettings",
    "RunnerOptions",
    "Sandbox",
    "SandboxControlClient",
    "SandboxControlError",
    "SandboxServer",
    "add_sandbox_parser",
    "bootstrap",
    "provision_event_queue",
    "run_sandbox",
]
