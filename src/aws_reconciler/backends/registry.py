"""Every backend the product knows, in one place: what the factory, executors and CLI loop over."""

from __future__ import annotations

from ..config import Settings
from ..model import Backend
from .batch.descriptor import BATCH
from .descriptor import BackendDescriptor
from .ecs.descriptor import ECS

DESCRIPTORS: tuple[BackendDescriptor, ...] = (ECS, BATCH)


def descriptor_for(kind: Backend) -> BackendDescriptor:
    """The descriptor of ``kind``."""
    for descriptor in DESCRIPTORS:
        if descriptor.kind is kind:
            return descriptor
    raise LookupError(f"no backend {kind!r}")


def enabled(settings: Settings) -> list[BackendDescriptor]:
    """The backends ``settings`` configure, in registry order."""
    return [d for d in DESCRIPTORS if d.settings_of(settings).enabled]
