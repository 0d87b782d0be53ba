"""The engines that drive the stages of a run, registered in one place (:data:`ENGINES`).

An engine takes the jobs of a run and moves them through :mod:`campp_cli.run.stages`
(decode -> explain -> finish), reporting each :class:`~campp_cli.run.options.Result` in input
order and returning a :class:`~campp_cli.run.options.Summary`.  It is named here by
``"module:function"`` so that importing this module (and ``campp --help``) imports neither torch
nor Ray; :func:`load_engine` imports it when a run needs it.

Every engine function has the signature
``run(jobs, clf, options, on_result, command, on_passes=None, **settings)``; ``settings`` are the
engine's own (for Ray: ``ray_address``, ``actors``, ``gpus_per_actor``), declared as
:class:`~campp_cli.registry.Setting` s, which the CLI offers as options and :func:`check_settings`
checks; ``on_passes`` is told of the extra forward passes of methods that need them.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from ...errors import UsageError
from ...registry import Registry, Setting


@dataclass(frozen=True)
class Engine:
    name: str
    target: str  # "package.module:function"
    help: str
    settings: tuple[Setting, ...] = ()  # the keyword settings it accepts
    extra: str | None = None  # the pip extra that installs what it needs
    requires: str | None = None  # the module it imports (to say which extra is missing)
    on_this_machine: bool = True  # the model runs here (-gpu picks its device); else the engine places it


def _check(name: str, engine: Engine) -> None:
    if ":" not in engine.target:
        raise ValueError(f"engine {name!r}: target must be 'module:function', not {engine.target!r}")


#: Every engine --engine accepts.
ENGINES: Registry[Engine] = Registry("engine", param="engine", check=_check)


def register_engine(name: str, target: str, help: str, settings: tuple[Setting, ...] = (),
                    extra: str | None = None, requires: str | None = None, on_this_machine: bool = True,
                    replace: bool = False) -> Engine:
    return ENGINES.register(name, Engine(name, target, help, tuple(settings), extra, requires, on_this_machine),
                            replace=replace)


def unregister_engine(name: str) -> None:
    ENGINES.get(name)
    ENGINES.unregister(name)


def list_engines() -> list[str]:
    return ENGINES.list()


def get_engine(name: str) -> Engine:
    return ENGINES.get(name)


def check_settings(name: str, given: dict[str, object]) -> dict[str, object]:
    """The settings given (not None) that ``name`` takes, checked; a usage error for one it does not take."""
    engine = get_engine(name)
    taken = {s.name: s for s in engine.settings}
    chosen = {}
    for key, value in given.items():
        if value is None:
            continue
        if key not in taken:
            raise UsageError(f"{{{key}}} is a setting of {{engine}} {' or '.join(ENGINES.users_of(key)) or '?'}, "
                             f"not of {{engine}} {name}", param=key, also=("engine",))
        chosen[key] = taken[key].check(value)
    return chosen


def load_engine(name: str) -> Callable:
    """The engine's run function, imported now (a missing extra is one usage error naming it)."""
    engine = get_engine(name)
    if engine.requires is not None:
        try:
            importlib.import_module(engine.requires)
        except ImportError as exc:
            raise UsageError(f"needs {engine.requires}, which is not installed ({exc}); install it with: "
                             f"pip install 'campp[{engine.extra}]'", param="engine", value=name) from None
    module, function = engine.target.split(":")
    return getattr(importlib.import_module(module), function)


register_engine("local", "campp_cli.run.engines.local:run",
                "this machine: decoding and writing threads around one model")
register_engine("ray", "campp_cli.run.engines.ray:run",
                "a Ray cluster (or a local Ray): Ray Data decoding and writing tasks around model actors",
                settings=(
                    Setting("ray_address", str, "ADDR",
                            "Ray cluster to run on: auto, HOST:PORT or ray://HOST:PORT. Default: RAY_ADDRESS if "
                            "set, else a local Ray started for the run."),
                    Setting("actors", int, "N", "Model actors (one model each). Default: one per GPU, or one per "
                                                "node without GPUs.", minimum=1),
                    Setting("gpus_per_actor", float, "G", "GPUs for each model actor (0.5 shares one). "
                                                          "Default: 1 when the cluster has GPUs, else 0.", minimum=0),
                ), extra="ray", requires="ray.data", on_this_machine=False)
