"""The methods registry: every explanation method campp knows, in one place.

A method is a small module that registers a function with
:func:`register_method`, saying what it needs:

* ``"activations"``: the target layer's activations A only (class-agnostic);
* ``"gradients"``: A and the gradient g = dS/dA of the explained class's logit S,
  which all such methods share from campp's one forward and one backward pass;
* ``"forward passes"``: A plus extra forward passes of the model (Score-CAM).

A method may also use what only some methods want (``uses=``, :data:`USES`),
which the pass then provides: the head's class weights (CAM), the
Hessian-vector product H A of the score (ShapleyCAM), or passes of the model
with the layer's output replaced (Ablation-CAM).  A method with a ``target=``
function is given the gradient of its own score instead of the class's
(Finer-CAM), from the same backward pass as every other target.

The function receives a :class:`MethodInput` and returns the combination
``(N, h, w)`` *before* the common last step, ``relu(.)`` divided by its maximum
per image (an all-zero map stays zero), which :func:`campp_cli.cam.explain.cam_maps`
applies to every method alike.  The CLI's choices, figure panels and titles,
output file names, ``campp evaluate`` and ``campp methods`` are all derived
from this registry.  Nothing here imports torch: ``campp --help`` and the
argument checks stay instant (method modules import it inside their functions).

Registering your own method::

    from campp_cli.cam.methods import register_method, channel_sum

    @register_method("gradcam_abs", title="|Grad|-CAM", summary="w_k = mean_ij |g_kij|")
    def gradcam_abs(inp):
        return channel_sum(inp.grads.abs().mean(dim=(2, 3)), inp.acts)

A method may declare its own settings (keyword arguments of
:func:`campp_cli.cam.explain.explain`, options of the CLI)::

    from campp_cli.cam.methods import Setting

    @register_method("smooth", settings=(Setting("sigma", float, "S", "Blur of the map.", default=1.0),))
    def smooth(inp):
        ...  # inp.settings["sigma"]
"""

from __future__ import annotations

import contextlib
import contextvars
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from ...errors import UsageError, suggest
from ...registry import Registry, Setting

#: What a method may need, cheapest first.
NEEDS = ("activations", "gradients", "forward passes")

#: What a method may use besides its needs: ``"head"``: ``inp.head``, the (W, b) of a global-average-pool + linear
#: head after the layer (a usage error where the model has none), in the pass's dtype (at least float32); ``"hvp"``:
#: ``inp.hvp``, H A, the Hessian of the score with respect to A applied to A (a second backward pass); ``"relayer"``:
#: ``inp.relayer(grids, rows, classes)``, the score of ``classes`` when the model runs on its images ``rows`` with
#: the layer's output replaced by ``grids`` (forward passes); ``"biases"``: ``inp.biases``, FullGrad's ``(input_term,
#: bias_terms)``: x * dS/dx (N, 3, H, W) and, for every convolution with a bias and every batch norm of the model
#: (:func:`campp_cli.cam.taps.bias_layers`), b * dS/dz (N, C, h, w) at its output z (the shared pass's backward
#: carried through the whole model to the input).
USES = ("head", "hvp", "relayer", "biases")

#: Settings every method takes (smoothing): on the CLI as flags and options of every command that explains.
EIGEN_SMOOTH = Setting("eigen_smooth", bool, "", "Each map: the first principal component of the method's "
                       "weighted activations instead of their sum (pytorch-grad-cam's eigen_smooth); no effect on "
                       "the methods that are principal components already.", default=False)
AUG_SMOOTH = Setting("aug_smooth", bool, "", "Each map: the mean of the maps of the photo and its mirror image, "
                     "each at 0.9, 1 and 1.1 times its brightness (6 passes), mirrored back.", default=False)
NOISE_SAMPLES = Setting("noise_samples", int, "N", "SmoothGrad: each map the mean of the maps of N copies of the "
                        "photo with Gaussian noise (0: none).", minimum=0, maximum=1000, default=0)
NOISE_SIGMA = Setting("noise_sigma", float, "S", "SmoothGrad: the noise's standard deviation, as a share of "
                      "each photo's range of values.", minimum=0.0, maximum=10.0, default=0.15)
COMMON = (EIGEN_SMOOTH, AUG_SMOOTH, NOISE_SAMPLES, NOISE_SIGMA)

#: The methods of a run unless told otherwise (the paper's pair).
DEFAULT_METHODS = ("gradcam", "gradcampp")

#: Keywords of explain() and cam_maps() themselves: no method setting may take one of these names.
RESERVED = frozenset({"model", "layer", "x", "classes", "methods", "image", "preprocess", "progress", "settings",
                      "grads", "acts", "score", "output_key", "differentiable", "head", "hvp", "relayer",
                      "biases", "own_grads"})

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class Method:
    """One registered method, what it needs and the settings it reads."""

    name: str
    title: str
    compute: Callable[["MethodInput"], Any]
    needs: str = "gradients"
    class_specific: bool = True
    reference: str = ""
    summary: str = ""
    settings: tuple[Setting, ...] = ()
    uses: tuple[str, ...] = ()
    target: Callable | None = None
    cost: str = ""
    in_all: bool = True

    @property
    def passes(self) -> str:
        """What it costs, in words: the shared pass, or that plus extra forward passes."""
        if self.cost:
            return self.cost
        if self.needs == "forward passes":
            return "one forward + K extra forward passes per image"
        extra = " + a second backward (H A), none where the head is piecewise linear" if "hvp" in self.uses else ""
        if "biases" in self.uses:
            extra += ", its backward carried through the whole model to the input"
        if self.needs == "activations":
            return "one forward pass (no backward)"
        return "the shared forward + backward pass" + extra


@dataclass
class MethodInput:
    """What a method's function gets for a batch of N images (float64 tensors).

    ``acts``: (N, K, h, w) activations of the target layer; ``grads``: dS/dA,
    same shape, or None when no requested method needs gradients; ``classes``:
    (N,) explained classes; ``settings``: every setting the run's methods
    declare, with its value (``settings["variant"]``: the Grad-CAM++ variant,
    ``settings["score_batch"]``: how many images a Score-CAM pass may take).
    For methods that need forward passes: ``score(images, classes)`` returns
    the softmax probability of ``classes[j]`` for ``images[j]`` (RGB in [0, 1]
    before the model's normalisation), ``image`` the batch itself (N, 3, S, S)
    and ``progress(n)`` is called after every n forward passes; if it also has
    a ``planned(passes, images)`` method, that is called first with how many
    passes the batch will run (for an ETA).  What a method ``uses`` (:data:`USES`): ``head``, ``hvp``,
    ``relayer``, ``biases`` (``head`` and ``biases`` in the pass's dtype, not float64: they are the size of the
    model's layers); a method
    with its own ``target`` finds the gradient of that target in ``grads``.  ``shared``: a dict the methods of
    one pass may keep what they computed from ``acts`` in, for one another (Eigen-CAM's and KPCA-CAM's
    centred activations); one dict for the whole pass, so a key names what its value is computed from.
    """

    acts: Any
    grads: Any = None
    classes: Any = None
    image: Any = None
    score: Callable | None = None
    progress: Callable[[int], None] | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    head: Any = None
    hvp: Any = None
    relayer: Callable | None = None
    biases: Any = None
    shared: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


def _check_settings(name: str, settings: tuple) -> None:
    """A method's settings: Setting objects, keyword-safe names, each meaning what other methods mean by it."""
    for setting in settings:
        if not isinstance(setting, Setting):
            raise ValueError(f"method {name}: settings must be Setting objects, not {type(setting).__name__}")
        if not setting.name.isidentifier() or setting.name in RESERVED:
            raise ValueError(f"method {name}: setting name {setting.name!r} must be a Python name other than "
                             f"{', '.join(sorted(RESERVED))}")
        try:
            setting.check(setting.default)
        except UsageError as exc:
            raise ValueError(f"method {name}: the default of setting {setting.name!r} does not fit it: {exc}") from None
        if any(c.name == setting.name for c in COMMON):
            raise ValueError(f"method {name}: setting {setting.name!r} is one every method takes; pick another name")
        for other in METHODS:
            if other.name != name and any(s.name == setting.name and s != setting for s in other.settings):
                raise ValueError(f"method {name}: setting {setting.name!r} is declared differently by method "
                                 f"{other.name}; declare the same Setting or pick another name")


def _check_method(name: str, method: Method) -> None:
    if not _NAME.match(name or "") or name == "all":
        raise ValueError(f"method name {name!r}: use lower-case letters, digits and _, starting with a letter "
                         f"('all' is reserved)")
    if method.needs not in NEEDS:
        raise ValueError(f"method {name}: needs must be one of {', '.join(NEEDS)}, not {method.needs!r}")
    unknown = [u for u in method.uses if u not in USES]
    if unknown:
        raise ValueError(f"method {name}: uses must be among {', '.join(USES)}, not {', '.join(map(repr, unknown))}")
    if method.target is not None and method.needs != "gradients":
        raise ValueError(f"method {name}: a target of its own is differentiated, so it needs gradients")
    _check_settings(name, method.settings)


#: Every registered method, in registration order (built-ins first).
METHODS: Registry[Method] = Registry("method", "methods", check=_check_method)


def register_method(name: str, *, title: str | None = None, needs: str = "gradients", class_specific: bool = True,
                    reference: str = "", summary: str = "", settings: Iterable[Setting] = (), uses: Iterable[str] = (),
                    target: Callable | None = None, cost: str = "", in_all: bool = True, replace: bool = False):
    """Decorator: register ``fn(MethodInput) -> (N, h, w)`` under ``name``.

    ``name`` is lower-case letters, digits and ``_`` (it becomes part of file
    names); ``settings``: the :class:`~campp_cli.registry.Setting` s the method
    reads from ``inp.settings`` (explain() takes each as a keyword);
    ``uses``: what else it takes (:data:`USES`); ``target(logits, classes, settings) -> (N,)``: the score
    whose gradient the method gets instead of the class's; ``cost``: its passes in words (for
    ``campp methods``), when the need alone does not say it; ``in_all=False``: a method defined for some
    models only, which ``"all"`` leaves out (CAM); ``replace=True`` lets a notebook re-run its cell.
    """
    settings = tuple(settings)

    def decorate(fn):
        method = Method(name, title or name, fn, needs, class_specific, reference, summary, settings,
                        tuple(uses), target, cost, in_all)
        METHODS.register(name, method, replace=replace)
        return fn

    return decorate


def unregister_method(name: str) -> None:
    """Remove a method (for notebooks and tests); unknown names are ignored."""
    METHODS.unregister(name)


def list_methods() -> list[str]:
    """Every registered method name, in registration order (built-ins first)."""
    return METHODS.list()


def get_method(name: str) -> Method:
    if name not in METHODS:  # the registry's message, plus "all"
        names = METHODS.list()
        raise UsageError(f"unknown method {name!r}{suggest(name, names)} (choose from {', '.join(names)}, or all)",
                         param=METHODS.param)
    return METHODS.get(name)


def every_method() -> list[str]:
    """What ``"all"`` means: every registered method but those defined for some models only (``in_all``)."""
    return [name for name in METHODS.list() if METHODS.get(name).in_all]


def parse_methods(spec: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"gradcam,layercam"``, ``"all"`` (:func:`every_method`) or a list of names -> a checked tuple, each
    name once, in order; ``"all"`` among names stands for :func:`every_method` at its place (``"all,cam"``:
    every method and CAM), and every other name is checked."""
    if spec is None:
        return DEFAULT_METHODS
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [str(s).strip().lower() for s in items if str(s).strip()]
    if not names:
        raise UsageError("give at least one method name, or all", param=METHODS.param)
    expanded = []
    for name in names:
        if name == "all":
            expanded.extend(every_method())
        else:
            get_method(name)
            expanded.append(name)
    return tuple(dict.fromkeys(expanded))


def method_settings(names: str | Iterable[str] | None = None) -> list[Setting]:
    """The settings the methods ``names`` declare (as :func:`parse_methods` reads them; None: every registered
    method), each name once, in registration order."""
    if names is None:
        return METHODS.settings() + list(COMMON)
    seen: dict[str, Setting] = {}
    for name in parse_methods(names):
        for setting in get_method(name).settings:
            seen.setdefault(setting.name, setting)
    return list(seen.values()) + list(COMMON)


def check_method_settings(given: dict[str, Any], names: str | Iterable[str] | None = None) -> dict[str, Any]:
    """Every setting of the methods ``names`` with its value: ``given``'s, checked, else the default.

    A setting that no registered method declares is a usage error naming it; a value that does not fit its
    setting is one too (:meth:`Setting.check`).  Settings of registered methods outside ``names`` are checked,
    then left out.
    """
    declared = {s.name: s for s in method_settings()}
    checked = {}
    for key, value in given.items():
        if key not in declared:
            raise UsageError(f"no method declares this setting{suggest(key, declared)} "
                             f"(the methods' settings: {', '.join(declared) or 'none'})", param=key)
        checked[key] = declared[key].check(value)
    wanted = method_settings(names)
    return {s.name: s.default if checked.get(s.name) is None else checked[s.name] for s in wanted}


def settings_in_words(names, settings: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) for each setting of the methods ``names`` that picks a variant of its method (a setting
    with choices), as captions, the CLI's summary line and the report's header show them:
    ``("Grad-CAM++ variant", "official")``; then the smoothing, if any: ``("smoothed by", "aug + noise 8 x
    0.15")``."""
    out = []
    for name in parse_methods(names):
        method = get_method(name)
        for setting in method.settings:
            if setting.choices is not None and setting.name in settings:
                out.append((f"{method.title} {setting.name}", str(settings[setting.name])))
    smoothing = [word for word, on in (("eigen", settings.get("eigen_smooth")), ("aug", settings.get("aug_smooth")))
                 if on]
    if settings.get("noise_samples"):
        smoothing.append(f"noise {settings['noise_samples']} x {settings['noise_sigma']:g}")
    if smoothing:  # maps that are not the methods' own: every caption says so
        out.append(("smoothed by", " + ".join(smoothing)))
    return out


def title(name: str) -> str:
    return get_method(name).title


def needs_any(names, need: str) -> bool:
    """Whether any of the methods ``names`` needs ``need`` (one of :data:`NEEDS`)."""
    return any(get_method(n).needs == need for n in names)


def uses_any(names, use: str) -> bool:
    """Whether any of the methods ``names`` uses ``use`` (one of :data:`USES`)."""
    return any(use in get_method(n).uses for n in names)


def nonzero(x):
    """``x`` with exact zeros replaced by one: the guard against 0/0 every method uses."""
    return x.where(x != 0, x.new_ones(()))


_EIGEN = contextvars.ContextVar("campp_eigen_smooth", default=False)


@contextlib.contextmanager
def eigen_smoothing(on: bool):
    """While on, :func:`channel_sum` and :func:`terms_sum` give the first principal component of the terms
    instead of their sum (``eigen_smooth``)."""
    token = _EIGEN.set(bool(on))
    try:
        yield
    finally:
        _EIGEN.reset(token)


def eigen_smoothed() -> bool:
    """Whether :func:`terms_sum` gives principal components now (``eigen_smooth``)."""
    return _EIGEN.get()


def terms_sum(terms):
    """``sum_k terms[n, k]``: (N, K, h, w) -> (N, h, w); with ``eigen_smooth``, Eigen-CAM's projection of the
    terms instead (their first principal component, signed to correlate with their sum)."""
    if _EIGEN.get():
        from .eigencam import projection

        return projection(terms)
    return terms.sum(dim=1)


def channel_sum(weights, acts):
    """``sum_k weights[n, k] * acts[n, k]``: (N, K) and (N, K, h, w) -> (N, h, w) (with ``eigen_smooth``,
    :func:`terms_sum` of the weighted channels)."""
    import torch

    if _EIGEN.get():
        return terms_sum(weights[:, :, None, None] * acts)
    return torch.einsum("nk,nkhw->nhw", weights, acts)


# The built-in methods register themselves on import, in the order campp lists them.
# isort: off
from . import gradcam, gradcampp, xgradcam, hirescam, elementwise, layercam, eigencam, scorecam  # noqa: E402,F401
from . import cam, eigengradcam, kpcacam, shapleycam, finercam, ablationcam, sscam, iscam  # noqa: E402,F401
from . import fullgrad  # noqa: E402,F401
# isort: on
