"""The methods registry: every explanation method campp knows, in one place.

A method is a small module that registers a function with
:func:`register_method`, saying what it needs:

* ``"activations"``: the target layer's activations A only (class-agnostic);
* ``"gradients"``: A and the gradient g = dS/dA of the explained class's logit S,
  which all such methods share from campp's one forward and one backward pass;
* ``"forward passes"``: A plus extra forward passes of the model (Score-CAM).

The function receives a :class:`MethodInput` and returns the combination
``(N, h, w)`` *before* the common last step, ``relu(.)`` divided by its maximum
per image (an all-zero map stays zero), which :func:`campp_cli.cam.cam_maps`
applies to every method alike.  The CLI's choices, figure panels and titles,
output file names, ``campp evaluate`` and ``campp methods`` are all derived
from this registry.  Nothing here imports torch: ``campp --help`` and the
argument checks stay instant (method modules import it inside their functions).

Registering your own method::

    from campp_cli.methods import register_method, channel_sum

    @register_method("gradcam_abs", title="|Grad|-CAM", summary="w_k = mean_ij |g_kij|")
    def gradcam_abs(inp):
        return channel_sum(inp.grads.abs().mean(dim=(2, 3)), inp.acts)
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from ..errors import UsageError
from ..settings import DEFAULT_SCORE_BATCH

#: What a method may need, cheapest first.
NEEDS = ("activations", "gradients", "forward passes")

#: The methods of a run unless told otherwise (the paper's pair).
DEFAULT_METHODS = ("gradcam", "gradcampp")

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class Method:
    """One registered method and what it needs."""

    name: str
    title: str
    compute: Callable[["MethodInput"], Any]
    needs: str = "gradients"
    class_specific: bool = True
    reference: str = ""
    summary: str = ""

    @property
    def passes(self) -> str:
        """What it costs, in words: the shared pass, or that plus extra forward passes."""
        if self.needs == "forward passes":
            return "one forward + K extra forward passes per image"
        if self.needs == "activations":
            return "one forward pass (no backward)"
        return "the shared forward + backward pass"


@dataclass
class MethodInput:
    """What a method's function gets for a batch of N images (float64 tensors).

    ``acts``: (N, K, h, w) activations of the target layer; ``grads``: dS/dA,
    same shape, or None when no requested method needs gradients; ``classes``:
    (N,) explained classes; ``variant``: the Grad-CAM++ variant.  For methods
    that need forward passes: ``score(images, classes)`` returns the softmax
    probability of ``classes[j]`` for ``images[j]`` (RGB in [0, 1] before the
    model's normalisation), ``image`` the batch itself (N, 3, S, S),
    ``score_batch`` how many images a pass may take and ``progress(n)`` is
    called after every n forward passes; if it also has a ``planned(passes,
    images)`` method, that is called first with how many passes the batch
    will run (for an ETA).
    """

    acts: Any
    grads: Any = None
    classes: Any = None
    variant: str = "official"
    image: Any = None
    score: Callable | None = None
    score_batch: int = DEFAULT_SCORE_BATCH
    progress: Callable[[int], None] | None = None


_REGISTRY: dict[str, Method] = {}


def register_method(name: str, *, title: str | None = None, needs: str = "gradients", class_specific: bool = True,
                    reference: str = "", summary: str = "", replace: bool = False):
    """Decorator: register ``fn(MethodInput) -> (N, h, w)`` under ``name``.

    ``name`` is lower-case letters, digits and ``_`` (it becomes part of file
    names); ``replace=True`` lets a notebook re-run its cell.
    """
    if not _NAME.match(name or "") or name == "all":
        raise ValueError(f"method name {name!r}: use lower-case letters, digits and _, starting with a letter "
                         f"('all' is reserved)")
    if needs not in NEEDS:
        raise ValueError(f"method {name}: needs must be one of {', '.join(NEEDS)}, not {needs!r}")
    if name in _REGISTRY and not replace:
        raise ValueError(f"method {name!r} is already registered (pass replace=True to redefine it)")

    def decorate(fn):
        _REGISTRY[name] = Method(name, title or name, fn, needs, class_specific, reference, summary)
        return fn

    return decorate


def unregister_method(name: str) -> None:
    """Remove a method (for notebooks and tests); unknown names are ignored."""
    _REGISTRY.pop(name, None)


def list_methods() -> list[str]:
    """Every registered method name, in registration order (built-ins first)."""
    return list(_REGISTRY)


def _suggest(name: str) -> str:
    close = difflib.get_close_matches(name, list(_REGISTRY), n=1, cutoff=0.5)
    return f"; did you mean {close[0]}?" if close else ""


def get_method(name: str) -> Method:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UsageError(f"--methods: unknown method {name!r}{_suggest(name)} "
                         f"(choose from {', '.join(_REGISTRY)}, or all)") from None


def parse_methods(spec: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"gradcam,layercam"``, ``"all"`` or a list of names -> a checked tuple, each name once, in order."""
    if spec is None:
        return DEFAULT_METHODS
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [str(s).strip().lower() for s in items if str(s).strip()]
    if not names:
        raise UsageError("--methods: give at least one method name, or all")
    if "all" in names:
        return tuple(_REGISTRY)
    for name in names:
        get_method(name)
    return tuple(dict.fromkeys(names))


def title(name: str) -> str:
    return get_method(name).title


def needs_any(names, need: str) -> bool:
    """Whether any of the methods ``names`` needs ``need`` (one of :data:`NEEDS`)."""
    return any(get_method(n).needs == need for n in names)


def nonzero(x):
    """``x`` with exact zeros replaced by one: the guard against 0/0 every method uses."""
    return x.where(x != 0, x.new_ones(()))


def channel_sum(weights, acts):
    """``sum_k weights[n, k] * acts[n, k]``: (N, K) and (N, K, h, w) -> (N, h, w)."""
    import torch

    return torch.einsum("nk,nkhw->nhw", weights, acts)


# The built-in methods register themselves on import, in the order campp lists them.
# isort: off
from . import gradcam, gradcampp, xgradcam, hirescam, elementwise, layercam, eigencam, scorecam  # noqa: E402,F401
# isort: on
