"""A work pool's base job template with its variables written in: nothing left to validate.

A Prefect server validates each flow run's job variables against its pool's variables
schema when it creates the flow run. With prefect-kubernetes' schema that is ~20 ms of
server CPU per flow run, about half of what a create costs it, and the Prefect server's CPU
is what limits how fast waves start on a shared cluster (README, "Scaling"). The values of
a batch's pool all come from its SierraBatch spec (the one place to change them), so the
pool needs no variables: :func:`fixed` applies their defaults exactly as a worker does for
a flow run without job variables (Prefect's own templating), and leaves an empty schema,
which the server validates in well under a millisecond. The Jobs workers make are the same.
"""

from __future__ import annotations

import copy
from typing import Any

from prefect.utilities.templating import apply_values

NO_VARIABLES: dict[str, Any] = {"type": "object", "properties": {}}
"""The variables schema of a fixed template: Prefect wants one; an empty one costs nothing."""


def fixed(template: dict[str, Any]) -> dict[str, Any]:
    """``template`` with each variable's default written where its job configuration uses
    it, as a worker renders a flow run without job variables (placeholders of variables
    without a default, or a None one, are dropped, as there), and no variables left."""
    values = {  # as BaseJobConfiguration._get_base_config_defaults: None is no value
        name: prop["default"]
        for name, prop in template["variables"].get("properties", {}).items()
        if prop.get("default") is not None
    }
    return {
        "job_configuration": apply_values(copy.deepcopy(template["job_configuration"]), values),
        "variables": copy.deepcopy(NO_VARIABLES),
    }
