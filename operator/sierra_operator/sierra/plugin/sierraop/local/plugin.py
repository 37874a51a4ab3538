"""``--execenv=sierraop.local``: the interface SIERRA calls (built by
:func:`sierra_operator.sierra.plugin.sierraop.base.interface`); the work is in
:mod:`sierra_operator.sierra.execenv`.

SIERRA imports every plugin it finds on SIERRA_PLUGIN_PATH, selected or not, and imports this
file as a top-level module: so sierra-operator is imported absolutely, and a SIERRA whose
Python lacks it still starts (selecting this execenv then says what to install).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _stage2(cmdopts: dict[str, Any], sierra_root: Path, batch_root: Path, cmdfile: Path) -> None:
    from sierra_operator.sierra.execenv import Stage2Options, run_stage2

    run_stage2(sierra_root, batch_root, cmdfile, Stage2Options.from_cmdopts(cmdopts))


try:
    from sierra_operator.sierra.plugin.sierraop.base import interface
except ImportError:  # SIERRA's Python has no sierra-operator: say so if selected
    from sierraop.fallback import not_installed

    cmdline_postparse_configure = execenv_check = not_installed("sierraop.local")
else:
    BatchShellCmdsGenerator, cmdline_postparse_configure, execenv_check = interface(
        "sierraop.local", _stage2
    )
