"""Merging of user request fragments (settings kwargs, executor_config) over a base request.

Lists of named things are merged by their name instead of replaced wholesale: a task that adds
one environment variable must not silently lose the others.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

# List-valued keys whose items are merged by the given identifying field.
MERGE_LISTS_BY: dict[str, str] = {
    "containerOverrides": "name",
    "environment": "name",
    "resourceRequirements": "type",
    "tags": "key",
}


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively merge ``override`` into a copy of ``base``; see :data:`MERGE_LISTS_BY`.

    The result shares nothing with either input: each is copied once, as it is merged.
    """
    return _merge_into(copy.deepcopy(dict(base)), override)


def _merge_into(merged: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    # ``merged`` is this merge's own copy already: changed in place, never copied again.
    for key, value in override.items():
        current = merged.get(key)
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            merged[key] = _merge_into(dict(current), value)
        elif key in MERGE_LISTS_BY and isinstance(current, list) and isinstance(value, list):
            merged[key] = _merge_named(current, value, MERGE_LISTS_BY[key])
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _merge_named(base: list[Any], override: list[Any], field: str) -> list[Any]:
    result = list(base)
    index = {item.get(field): i for i, item in enumerate(result) if isinstance(item, Mapping)}
    for item in override:
        name = item.get(field) if isinstance(item, Mapping) else None
        if name is not None and name in index:
            result[index[name]] = _merge_into(dict(result[index[name]]), item)
        else:
            if name is not None:
                index[name] = len(result)
            result.append(copy.deepcopy(item))
    return result


def clone(value: Any) -> Any:
    """A copy of request data that shares no dict, list or tuple with ``value``; anything else
    is shared (a request holds only strings, numbers, booleans and None besides). Several times
    faster than :func:`copy.deepcopy`: it runs for every task queued."""
    kind = type(value)
    if kind is dict:
        return {k: clone(v) for k, v in value.items()}
    if kind is list:
        return [clone(v) for v in value]
    if kind is tuple:
        return tuple(clone(v) for v in value)
    return value
