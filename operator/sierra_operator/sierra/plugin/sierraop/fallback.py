"""What both ``sierraop`` plugins give SIERRA when its Python lacks sierra-operator.

Why not in ``base.py``: that imports sierra-operator, whose absence is the case here. This
file imports nothing but the standard library and is found as ``sierraop.fallback`` because
SIERRA puts the plugin directory on ``sys.path`` before it loads a plugin.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any, NoReturn

EXIT_NOT_INSTALLED = 2


def not_installed(execenv: str) -> Callable[..., NoReturn]:
    """SIERRA's option hooks for ``execenv`` when it is selected: one log line saying what to
    install, and exit 2 (SIERRA imports every plugin on its path, selected or not, so the
    import itself must not fail)."""

    def refuse(*_: Any) -> NoReturn:
        logging.getLogger("sierraop").error(
            "--execenv=%s needs sierra-operator in the Python that runs SIERRA (%s): pip "
            "install sierra-operator there, or use the sierra command of its environment",
            execenv,
            sys.executable,
        )
        raise SystemExit(EXIT_NOT_INSTALLED)

    return refuse
