"""A failed wave settles at once (issue 22 item 3): the real flow, run in a process of its
own against the real session Prefect server, names each run's outcome in its FAILED state's
message, so the batch reads every run's end from the flow run alone, before any task run
state (those come later, through events) has reached the database.

The missing task states are the cluster's situation under load (the operator cannot read
the records on the PVC; task events lag by up to a minute): the observation is made with no
task runs and no records, one second after the flow run ended, as the operator would on
its next poll."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import FlowFilter, FlowFilterName
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort

from sierra_operator.core import names
from sierra_operator.core.machine import RunPhase
from sierra_operator.runs.observations import flow_run_observations

pytestmark = pytest.mark.integration

RUN_WAVE = """
import json, sys
from sierra_operator.runs.flows import run_experiment
run_experiment(**json.loads(sys.argv[1]))
"""


async def _flow_run_of(api_url: str, batch_id: str) -> FlowRun:
    async with PrefectClient(api=api_url) as client:
        runs = await client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[names.EXPERIMENT_FLOW_NAME])),
            sort=FlowRunSort.END_TIME_DESC,  # the newest first: a long-lived server has more
            limit=20,
        )
    (fr,) = [r for r in runs if r.parameters.get("batch_id") == batch_id]
    return fr


def test_a_failed_wave_names_each_runs_outcome_in_its_own_state(
    prefect_api_url: str, tmp_path: Path
) -> None:
    batch_id = f"wave-{uuid.uuid4().hex[:8]}"
    runs = [
        {"index": 0, "attempt": 1, "command": "echo fine"},
        {"index": 1, "attempt": 1, "command": "echo 'ValueError: bad seed' >&2; exit 3"},
        {"index": 2, "attempt": 2, "command": "true"},
        {"index": 3, "attempt": 1, "command": "exit 5"},
    ]
    params = {
        "batch_id": batch_id,
        "batch_root": str(tmp_path / "batch"),
        "workdir": str(tmp_path),
        "experiment": "c1-exp0",
        "runs": runs,
        "parallelism": 2,
    }
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_api_url,
        "PREFECT_HOME": str(tmp_path / "home"),
    }
    done = subprocess.run(
        [sys.executable, "-c", RUN_WAVE, json.dumps(params)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0, "the wave failed: two of its runs did"
    fr = asyncio.run(_flow_run_of(prefect_api_url, batch_id))
    assert fr.state is not None and fr.state.type is StateType.FAILED, fr.state
    assert fr.end_time is not None
    observed, settled = flow_run_observations(fr, {}, None, fr.end_time + timedelta(seconds=1))
    phases = {index: obs.phase for (_, index), (_, obs) in observed.items()}
    assert phases == {
        0: RunPhase.SUCCEEDED,
        1: RunPhase.FAILED,
        2: RunPhase.SUCCEEDED,
        3: RunPhase.FAILED,
    }
    assert settled, "nothing left to wait for: the batch moves on at its next read"
    reasons = {index: obs.reason for (_, index), (_, obs) in observed.items()}
    assert reasons[1] == "exited 3; stderr ends: ValueError: bad seed"
    assert reasons[3] == "exited 5"
    assert observed[("c1-exp0", 2)][0] == 2, "the attempt the wave ran"
