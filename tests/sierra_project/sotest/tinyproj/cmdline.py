"""The project's command line: SIERRA requires --scenario and --controller."""

from __future__ import annotations

import argparse
from typing import Any

from sierra.plugins import PluginCmdline


def build(parents: list[argparse.ArgumentParser], stages: list[int]) -> PluginCmdline:
    """--scenario (any name) and --controller (default.default)."""
    cmdline = PluginCmdline(parents, stages)
    cmdline.multistage.add_argument("--scenario", help="scenario name (any)")
    cmdline.multistage.add_argument(
        "--controller", choices=["default.default"], help="the one controller"
    )
    return cmdline


def to_cmdopts(args: argparse.Namespace) -> dict[str, Any]:
    """What SIERRA keeps of the project's options."""
    return {"scenario": args.scenario, "controller": args.controller}
