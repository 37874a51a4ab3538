"""Per-run changes: where the run writes and its seed."""

from __future__ import annotations

import pathlib
from typing import Any

from sierra.core.experiment import definition


def for_single_exp_run(
    exp_def: definition.BaseExpDef,
    run_num: int,
    run_output_path: pathlib.Path,
    launch_stem_path: pathlib.Path,
    random_seed: int,
    cmdopts: dict[str, Any],
) -> definition.BaseExpDef:
    """Outputs under <run>_output/output/ (main.yaml's run_metrics_leaf), one seed a run."""
    exp_def.attr_change("$.config", "output_root", str(run_output_path / "output"))
    exp_def.attr_change("$.config", "seed", random_seed)
    return exp_def
