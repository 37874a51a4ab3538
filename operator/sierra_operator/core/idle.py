"""Which batches need no reconcile at all: the kopf timer's ``when=`` filter.

A reconcile costs a Prefect read (and, before this filter, a status write) per batch per
tick. A finished batch never changes again, and a suspended one has nothing active (that is
what phase ``Suspended`` means, see :func:`sierra_operator.core.machine.decide`): neither needs a
tick until its spec changes, which bumps ``metadata.generation`` past
``status.observedGeneration`` and makes the filter true again. kopf re-evaluates the filter
on every watch event of the batch, stopping its timer (no request at all) when it turns
false and starting it again when it turns true.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sierra_operator.core.model import TERMINAL_PHASES, BatchPhase


def needs_reconcile(body: Mapping[str, Any]) -> bool:
    """False for a batch that is finished, or suspended and still asked to be, at the spec
    generation its status was computed from; True for anything else (when in doubt, tick).

    Finished means phase Succeeded or Failed with condition ``Complete=True``: a batch that
    failed validation (``Valid=False``, no ``Complete``) keeps ticking, so fixing its spec
    is noticed.
    """
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    generation = meta.get("generation")
    if generation is None or status.get("observedGeneration") != generation:
        return True
    phase = status.get("phase")
    if phase in TERMINAL_PHASES:
        complete = any(
            c.get("type") == "Complete" and c.get("status") == "True"
            for c in status.get("conditions") or []
            if isinstance(c, Mapping)
        )
        return not complete
    if phase == BatchPhase.SUSPENDED:
        return spec.get("suspend") is not True
    return True
