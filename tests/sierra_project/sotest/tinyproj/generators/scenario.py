"""Scenario: the template as it is (tinysim has no arena)."""

from __future__ import annotations

import pathlib
from typing import Any

from sierra.core import plugin as pm
from sierra.core.experiment import definition


def to_generator_name(scenario: str) -> str:
    """Every scenario uses :func:`generate`."""
    return "generate"


def to_dict(scenario: str) -> dict[str, Any]:
    """No arena: tinysim is not spatial."""
    return {"arena_x": 0, "arena_y": 0, "arena_z": 0, "scenario_tag": scenario}


def generate(
    spec: Any, controller: str, cmdopts: dict[str, Any], expdef_template_fpath: pathlib.Path
) -> definition.BaseExpDef:
    """The template, written whole as <input>.json."""
    config = definition.WriterConfig(
        [
            {
                "src_parent": None,
                "src_tag": "$",
                "opath_leaf": ".json",
                "new_children": None,
                "new_children_parent": None,
                "rename_to": None,
            }
        ]
    )
    module = pm.pipeline.get_plugin_module(cmdopts["expdef"])
    return module.ExpDef(input_fpath=expdef_template_fpath, write_config=config)
