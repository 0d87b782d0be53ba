"""The engines that drive the stages of a run, registered in one place.

An engine takes the jobs of a run and moves them through :mod:`campp_cli.stages`
(decode -> explain -> finish), reporting each :class:`~campp_cli.stages.Result`
in input order and returning a :class:`~campp_cli.stages.Summary`.  It is named
here by ``"module:function"`` so that importing this module (and ``campp
--help``) imports neither torch nor Ray; :func:`get_engine` imports it when a
run needs it.  ``--engine`` lists :func:`list_engines`.

Every engine function has the signature
``run(jobs, clf, options, on_result, command, **settings)``; ``settings`` are
the engine's own (for Ray: ``address``, ``actors``, ``gpus_per_actor``), and
:attr:`Engine.settings` names them so that the CLI can refuse a setting the
chosen engine does not take.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from .errors import UsageError


@dataclass(frozen=True)
class Setting:
    """A keyword setting of an engine; the CLI offers it as ``--NAME-WITH-DASHES``."""

    name: str  # the keyword, e.g. "ray_address"
    kind: type  # str, int or float
    metavar: str
    help: str
    minimum: float | None = None  # for int and float

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class Engine:
    name: str
    target: str  # "package.module:function"
    help: str
    settings: tuple[Setting, ...] = ()  # the keyword settings it accepts
    extra: str | None = None  # the pip extra that installs what it needs
    requires: str | None = None  # the module it imports (to say which extra is missing)
    on_this_machine: bool = True  # the model runs here (-gpu picks its device); else the engine places it


_ENGINES: dict[str, Engine] = {}


def register_engine(name: str, target: str, help: str, settings: tuple[Setting, ...] = (),
                    extra: str | None = None, requires: str | None = None, on_this_machine: bool = True) -> Engine:
    if name in _ENGINES:
        raise ValueError(f"engine {name!r} is already registered")
    if ":" not in target:
        raise ValueError(f"engine {name!r}: target must be 'module:function', not {target!r}")
    engine = Engine(name, target, help, tuple(settings), extra, requires, on_this_machine)
    _ENGINES[name] = engine
    return engine


def unregister_engine(name: str) -> None:
    get_engine(name)
    del _ENGINES[name]


def list_engines() -> list[str]:
    return list(_ENGINES)


def get_engine(name: str) -> Engine:
    try:
        return _ENGINES[name]
    except KeyError:
        raise UsageError(f"--engine {name}: unknown engine; choose from {', '.join(_ENGINES)}") from None


def all_settings() -> list[Setting]:
    """Every engine's settings, each once (for the CLI's options)."""
    seen: dict[str, Setting] = {}
    for engine in _ENGINES.values():
        for setting in engine.settings:
            seen.setdefault(setting.name, setting)
    return list(seen.values())


def users_of(setting: str) -> list[str]:
    return [e.name for e in _ENGINES.values() if any(s.name == setting for s in e.settings)]


def check_settings(name: str, given: dict[str, object]) -> dict[str, object]:
    """The settings given (not None) that ``name`` takes; a usage error for one it does not take."""
    engine = get_engine(name)
    chosen = {k: v for k, v in given.items() if v is not None}
    taken = {s.name for s in engine.settings}
    flags = {s.name: s.flag for s in all_settings()}
    for key in chosen:
        if key not in taken:
            raise UsageError(f"{flags.get(key, key)} is a setting of --engine {' or '.join(users_of(key)) or '?'}, "
                             f"not of --engine {name}")
    return chosen


def load_engine(name: str) -> Callable:
    """The engine's run function, imported now (a missing extra is one usage error naming it)."""
    engine = get_engine(name)
    if engine.requires is not None:
        try:
            importlib.import_module(engine.requires)
        except ImportError as exc:
            raise UsageError(f"--engine {name} needs {engine.requires}, which is not installed "
                             f"({exc}); install it with: pip install 'campp[{engine.extra}]'") from None
    module, function = engine.target.split(":")
    return getattr(importlib.import_module(module), function)


register_engine("local", "campp_cli.pipeline:run",
                "this machine: decoding and writing threads around one model")
register_engine("ray", "campp_cli.ray_engine:run",
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
