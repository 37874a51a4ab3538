"""``--execenv=sierraop.cluster``: the interface SIERRA calls (built by
:func:`sierra_operator.sierra.plugin.sierraop.base.interface`); the work is in
:mod:`sierra_operator.sierra.cluster_stage2`. Imported as ``local/plugin.py`` is (see there).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def _stage2(cmdopts: dict[str, Any], sierra_root: Path, batch_root: Path, cmdfile: Path) -> None:
    from sierra_operator.sierra.cluster_stage2 import ClusterOptions, run_cluster_stage2

    run_cluster_stage2(sierra_root, batch_root, cmdfile, ClusterOptions.from_cmdopts(cmdopts))


def _check_args(args: argparse.Namespace) -> str | None:
    """--image is needed whenever stage 2 runs (it names every run pod's image)."""
    if not getattr(args, "image", None) and 2 in (getattr(args, "pipeline", None) or [2]):
        return "--execenv=sierraop.cluster needs --image repository:tag (the runs' image)"
    return None


try:
    from sierra_operator.sierra.plugin.sierraop.base import interface
except ImportError:  # SIERRA's Python has no sierra-operator: say so if selected
    from sierraop.fallback import not_installed

    cmdline_postparse_configure = execenv_check = not_installed("sierraop.cluster")
else:
    BatchShellCmdsGenerator, cmdline_postparse_configure, execenv_check = interface(
        "sierraop.cluster", _stage2, _check_args
    )
