"""One registry shape for everything campp lets you add: methods, model sources, output kinds, engines, commands.

Each kind of thing has one :class:`Registry`; every registry has the same verbs, as timm's model registry
does: ``register`` (a name taken twice is an error, unless ``replace=True``), ``get`` (an unknown name is a
:class:`~campp_cli.errors.UsageError` naming the parameter, with the closest names), ``list`` and
``settings``.  An entry may declare :class:`Setting` s, its own keyword arguments: the CLI makes each one a
click option (``Setting.flag``) and the library takes it as a keyword, so a method's, an engine's or a
source's option is written once, beside the code that reads it.  Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterator, TypeVar

from .errors import UsageError, suggest

T = TypeVar("T")


@dataclass(frozen=True)
class Setting:
    """A keyword setting that a registered entry declares; the CLI offers it as ``--NAME-WITH-DASHES``."""

    name: str  # the keyword, e.g. "score_batch"
    kind: type  # str, int, float or bool
    metavar: str
    help: str
    minimum: float | None = None  # for int and float
    maximum: float | None = None
    default: Any = None  # None: unset (the entry decides)
    choices: tuple[str, ...] | None = None  # for str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def check(self, value: Any) -> Any:
        """``value`` as this setting's kind; a usage error naming the setting when it does not fit."""
        if value is None:
            return None
        if self.kind is bool:
            if not isinstance(value, bool):
                raise UsageError("give true or false", param=self.name, value=value)
            return value
        if self.choices is not None and value not in self.choices:
            raise UsageError(f"choose from {', '.join(self.choices)}{suggest(str(value), self.choices)}",
                             param=self.name, value=value)
        if self.kind in (int, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                    self.kind is int and not float(value).is_integer()):
                raise UsageError(f"give {'an integer' if self.kind is int else 'a number'}", param=self.name,
                                 value=value)
            value = self.kind(value)
            if self.minimum is not None and value < self.minimum:
                raise UsageError(f"give at least {self.minimum:g}", param=self.name, value=value)
            if self.maximum is not None and value > self.maximum:
                raise UsageError(f"give at most {self.maximum:g}", param=self.name, value=value)
        return value


class Registry(Generic[T]):
    """Named entries of one kind, in registration order.

    ``kind`` says what an entry is in messages ("method", "engine"); ``param`` is the parameter that names
    entries (``methods``, ``engine``, ``arch``), which an unknown name's error carries so the CLI can name
    its flag.  Entries that declare settings have a ``settings`` attribute (a tuple of :class:`Setting`).
    """

    def __init__(self, kind: str, param: str | None = None, check: Callable[[str, T], None] | None = None):
        self.kind = kind
        self.param = param
        self._check = check
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T, replace: bool = False) -> T:
        if name in self._entries and not replace:
            raise ValueError(f"{self.kind} {name!r} is already registered (pass replace=True to redefine it)")
        if self._check is not None:
            self._check(name, entry)
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        """Remove an entry (notebooks, tests); an unknown name is ignored."""
        self._entries.pop(name, None)

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UsageError(f"unknown {self.kind} {name!r}{suggest(name, self.list())} "
                             f"(choose from {', '.join(self._entries)})", param=self.param) from None

    def list(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._entries.values()))

    def settings(self) -> list[Setting]:
        """Every entry's settings, each name once, in registration order (for the CLI's options)."""
        seen: dict[str, Setting] = {}
        for entry in self:
            for setting in getattr(entry, "settings", ()):
                seen.setdefault(setting.name, setting)
        return list(seen.values())

    def users_of(self, setting: str) -> list[str]:
        """The entries that declare ``setting``."""
        return [name for name, entry in self._entries.items()
                if any(s.name == setting for s in getattr(entry, "settings", ()))]
