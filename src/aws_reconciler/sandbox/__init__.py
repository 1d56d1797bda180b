"""Embedded fake AWS for the demo and the tests: moto behind a lock, with fidelity shims.

``SandboxServer`` serves it over HTTP on 127.0.0.1; ``bootstrap`` creates the resources the
executor needs there; ``SandboxControlClient`` drives a sandbox running in another process.
"""

from .bootstrap import bootstrap
from .control import SandboxControl, SandboxControlClient, SandboxControlError
from .server import FAKE_CREDENTIALS, SandboxServer

__all__ = [
    "FAKE_CREDENTIALS",
    "SandboxControl",
    "SandboxControlClient",
    "SandboxControlError",
    "SandboxServer",
    "bootstrap",
]
