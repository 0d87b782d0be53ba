"""What each command adds to a run, registered in one place (:data:`COMMANDS`).

A command has a *planner* (checks its own arguments and plans the inputs, torch-free; then makes the
stage command, handles each result, closes the run: :class:`campp_cli.commands.planner.Planner`) and a
stage command (:class:`campp_cli.run.stages.Command`: what runs with the model and per image).  Planners are
named by ``"module:Class"`` so that importing this registry imports nothing heavy.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from ..registry import Registry


@dataclass(frozen=True)
class CommandEntry:
    name: str
    target: str  # "package.module:Planner"
    help: str


def _check(name: str, entry: CommandEntry) -> None:
    if ":" not in entry.target:
        raise ValueError(f"command {name!r}: target must be 'module:Class', not {entry.target!r}")


#: Every command a Run can run.
COMMANDS: Registry[CommandEntry] = Registry("command", param="command", check=_check)


def register_command(name: str, target: str, help: str = "", replace: bool = False) -> CommandEntry:
    return COMMANDS.register(name, CommandEntry(name, target, help), replace=replace)


def get_planner(name: str) -> type:
    module, cls = COMMANDS.get(name).target.split(":")
    return getattr(importlib.import_module(module), cls)


register_command("classify", "campp_cli.commands.classify_plan:ClassifyPlanner",
                 "figures (and maps, guided maps) for each image, as the paper's classify.py")
register_command("evaluate", "campp_cli.commands.evaluate_plan:EvaluatePlanner",
                 "faithfulness (and localisation) scores of each method")
register_command("explain", "campp_cli.notebook:ExplainPlanner",
                 "figures and maps kept in memory, for a notebook")
