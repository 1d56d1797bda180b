"""Embedded fake AWS for the demo and the tests: moto behind a lock, with fidelity shims.

``SandboxServer`` serves it over HTTP on 127.0.0.1; ``bootstrap`` creates the resources the
executor needs there; ``SandboxControlClient`` drives a sandbox running in another process.
``SandboxServer(run_tasks=True)`` also runs each ECS task's and Batch job's container command as a
local process (``RunnerOptions`` tunes it); ``run_sandbox`` is the ``aws-reconciler sandbox`` command.
"""

from .bootstrap import bootstrap
from .cli import add_sandbox_parser, run_sandbox
from .control import SandboxControl, SandboxControlClient, SandboxControlError
from .runner import RunnerOptions
from .server import FAKE_CREDENTIALS, SandboxServer

__all__ = [
    "FAKE_CREDENTIALS",
    "RunnerOptions",
    "SandboxControl",
    "SandboxControlClient",
    "SandboxControlError",
    "SandboxServer",
    "add_sandbox_parser",
    "bootstrap",
    "run_sandbox",
]
