"""JSON merge patch (RFC 7386): what the API server stores, and the least patch to send.

kopf writes status with ``Content-Type: application/merge-patch+json``. The API server applies
it by RFC 7386: a ``null`` deletes the key, objects merge recursively, anything else (lists
included) replaces. So the stored status never holds a ``null``, and "did the status change"
must be asked of what the server would store, not of a dump with ``null`` for absent fields
(that question is true on every tick: a write per batch per second, for nothing).

:func:`apply` is the server's side (the test API emulator uses it too); :func:`diff` is the
operator's: the smallest patch that turns the stored document into the new one, empty when
they are equal, so an unchanged batch costs no request.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

JSON = Any
"""A decoded JSON value: dict, list, str, int, float, bool or None."""


def apply(target: JSON, patch: JSON) -> JSON:
    """``target`` with ``patch`` merged in, exactly as RFC 7386 section 2 (MergePatch) says.

    A patch that is not an object replaces the target whole (lists are never merged); in an
    object patch ``null`` removes the key and every other value is merged into the target's
    value (a target that is not an object counts as ``{}``). Neither argument is modified;
    unchanged parts of ``target`` are shared with the result, not copied.
    """
    if not isinstance(patch, Mapping):
        return patch
    result: dict[str, JSON] = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply(result.get(key), value)
    return result


def diff(old: Mapping[str, JSON], new: Mapping[str, JSON]) -> dict[str, JSON]:
    """The minimal merge patch ``p`` with ``apply(old, p) == new``; ``{}`` when they are equal.

    Keys of ``old`` missing from ``new`` become ``null``; objects on both sides are diffed
    recursively; anything else that differs (lists, scalars, a change of type) is sent whole.
    ``new`` must hold no ``null`` (a merge patch cannot store one: it would mean "delete"),
    which ``model_dump(exclude_none=True)`` guarantees.
    """
    patch: dict[str, JSON] = {key: None for key in old if key not in new}
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif isinstance(value, Mapping) and isinstance(old[key], Mapping):
            nested = diff(old[key], value)
            if nested:
                patch[key] = nested
        elif old[key] != value:
            patch[key] = value
    return patch
