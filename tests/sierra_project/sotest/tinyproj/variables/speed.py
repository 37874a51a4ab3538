"""Batch criterion ``speed.<min>.<max>.C<n>``: n experiments, speeds evenly from min to max."""

from __future__ import annotations

import pathlib
from typing import Any

from sierra.core.experiment import definition
from sierra.core.graphs import bcbridge
from sierra.core.variables import batch_criteria as bc
from sierra.core.variables import builtin


class Speed(bc.UnivarBatchCriteria, bcbridge.IGraphable):
    """One experiment per speed."""

    def __init__(
        self, cli_arg: str, main_config: Any, batch_input_root: pathlib.Path, levels: list
    ) -> None:
        bc.UnivarBatchCriteria.__init__(self, cli_arg, main_config, batch_input_root)
        self.levels = levels
        self.attr_changes: list = []

    def gen_attr_changelist(self) -> list:
        if not self.attr_changes:
            self.attr_changes = [
                definition.AttrChangeSet(definition.AttrChange("$.config", "speed", float(s)))
                for s in self.levels
            ]
        return self.attr_changes

    def graph_info(
        self, cmdopts: Any, batch_output_root: Any = None, legend: Any = None
    ) -> bcbridge.GraphInfo:
        info = bcbridge.GraphInfo(
            cmdopts, batch_output_root, legend if legend else self.gen_exp_names()
        )
        info.xticks = [float(i) for i in range(len(self.levels))]
        info.xticklabels = [str(s) for s in self.levels]
        info.xlabel = "Speed"
        return info


def factory(
    cli_arg: str,
    main_config: Any,
    cmdopts: Any,
    batch_input_root: pathlib.Path,
    **kwargs: Any,
) -> Speed:
    """SIERRA's entry point for ``--bc speed....``."""
    return Speed(
        cli_arg,
        main_config,
        batch_input_root,
        builtin.linspace_parse(cli_arg.split(".", 1)[1], 1.0),
    )
