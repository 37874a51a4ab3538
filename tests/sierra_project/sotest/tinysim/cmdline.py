"""The engine's command line: nothing of its own (the simulator path is fixed)."""

from __future__ import annotations

import argparse
from typing import Any

from sierra.plugins import PluginCmdline


def build(parents: list[argparse.ArgumentParser], stages: list[int]) -> PluginCmdline:
    """No engine options."""
    return PluginCmdline(parents, stages)


def to_cmdopts(args: argparse.Namespace) -> dict[str, Any]:
    """No engine options."""
    return {}
