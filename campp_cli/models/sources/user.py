"""Your own model: ``--model FILE.py:FUNCTION`` / ``package.module:FUNCTION`` (a function returning an
``nn.Module``), or the module itself from a notebook.

Not a registered source: what it resolves is code or an object, not a name, and its classes come from a
dry run at the input size asked for.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

import torch

from ...cam.explain import model_input
from ...cam.outputs import logits_of
from ...errors import ModelError, UsageError, suggest
from ..labels import numbered
from ..preprocessing import Preprocessing
from ..spec import ArchSpec, raised


def _where(ref: str) -> tuple[str, str, bool]:
    """``(module or file, function, is a file)`` of ``ref``; a usage error for a file that is not there."""
    where, sep, attr = ref.rpartition(":")
    if not sep or not where or not attr:
        raise UsageError("give FILE.py:FUNCTION or package.module:FUNCTION", param="model", value=ref)
    is_file = where.endswith(".py") or os.sep in where or "/" in where
    if is_file and not Path(where).is_file():
        raise UsageError(f"{where}: no such file", param="model", value=ref)
    return where, attr, is_file


def _import_module(where: str, is_file: bool):
    """The module ``where`` names, imported as Python would (a file by its path)."""
    if is_file:
        path = Path(where)
        name = f"campp_user_{abs(hash(str(path.absolute())))}"
        folder = str(path.absolute().parent)
    else:
        name, folder = where, os.getcwd()  # python -m and python -c see the working folder too
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        if not is_file:
            return importlib.import_module(where)
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)


def import_user_code(ref: str):
    """``FILE.py:FUNCTION`` or ``package.module:FUNCTION`` -> the function (imported as Python would)."""
    where, attr, is_file = _where(ref)
    try:
        module = _import_module(where, is_file)
    except ModuleNotFoundError as exc:
        if not is_file and exc.name and where.startswith(exc.name):
            raise UsageError(f"no module {exc.name!r} (run from the folder that holds it, or install it)",
                             param="model", value=ref) from exc
        raise ModelError(f"importing {where} failed: {raised(exc)}", param="model", value=ref) from exc
    except Exception as exc:  # the user's code: one line; --debug shows the traceback
        raise ModelError(f"importing {where} failed: {raised(exc)}", param="model", value=ref) from exc
    function = getattr(module, attr, None)
    if not callable(function):
        names = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        raise UsageError(f"{where} has no function {attr!r}{suggest(attr, names, n=3)}", param="model", value=ref)
    return function


def _builder(model: "str | torch.nn.Module"):
    """``(name, a function building the module)`` of ``model``."""
    if isinstance(model, torch.nn.Module):
        return type(model).__name__, lambda: model
    function = import_user_code(model)

    def build():
        try:
            out = function()
        except Exception as exc:
            raise ModelError(f"the function raised {raised(exc)}", param="model", value=model) from exc
        if not isinstance(out, torch.nn.Module):
            raise UsageError(f"the function returned a {type(out).__name__}, not a torch.nn.Module",
                             param="model", value=model)
        return out

    return model, build


def user_spec(model: "str | torch.nn.Module", input_size: int, output_key: "str | int | None" = None) -> ArchSpec:
    """An :class:`ArchSpec` for ``--model REF`` (a function returning an ``nn.Module``) or a module object; its
    output's logits at ``output_key`` (see :func:`campp_cli.cam.outputs.logits_of`)."""
    name, build = _builder(model)
    probe = build().eval()
    classes = output_classes(probe, input_size, name, output_key)
    memo = [probe]  # the module built to count the outputs serves the first load

    def once():
        return memo.pop() if memo else build()

    return ArchSpec(name=name, builder=once, categories=tuple(config_labels(probe, classes) or numbered(classes)),
                    preprocessing=Preprocessing(), input_size=input_size, weights_filename="",
                    weights_optional=True)


def config_labels(module: torch.nn.Module, classes: int) -> list[str] | None:
    """The class names a Hugging Face model's ``config.id2label`` gives, one per output, or None (no such
    config, or its names are only its defaults ``LABEL_k``)."""
    names = getattr(getattr(module, "config", None), "id2label", None)
    if not isinstance(names, dict) or sorted(names) != list(range(classes)):
        return None
    out = [str(names[k]) for k in range(classes)]
    return None if out == [f"LABEL_{k}" for k in range(classes)] else out


def _dry_run(module: torch.nn.Module, n: int, size: int, name: str, output_key=None) -> int:
    """The classes of ``module``'s output (its logits at ``output_key``) for ``n`` images of ``size``, a model
    error unless they are (n, classes) floating-point logits."""
    try:
        with torch.no_grad():
            out = module(model_input(module, torch.zeros(n, 3, size, size)))
    except Exception as exc:
        raise ModelError(f"model {name}: a {size}x{size} input fails: {raised(exc)} "
                         f"(its input size? give {{input_size}})", also=("input_size",)) from exc
    out = logits_of(out, output_key)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != n:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        what = "its output" if n == 1 else "its output for a batch of 2 images"
        raise ModelError(f"model {name}: {what} is {shape}, not (N, classes): campp explains classifiers "
                         f"(return the logits, one row per image)")
    if out.shape[1] == 0:
        raise ModelError(f"model {name}: its output is {tuple(out.shape)}: no classes to explain")
    if not out.is_floating_point():
        raise ModelError(f"model {name}: its output is {str(out.dtype).replace('torch.', '')}, not floating "
                         f"point: campp explains the gradients of logits (return them as floats)")
    return int(out.shape[1])


def output_classes(module: torch.nn.Module, size: int, name: str, output_key=None) -> int:
    """The number of classes of a model whose output is (N, classes) floating-point logits, from a dry run
    of one image and one of two (a model that folds the batch into one row cannot be explained per image)."""
    one, two = (_dry_run(module, n, size, name, output_key) for n in (1, 2))
    if one != two:
        raise ModelError(f"model {name}: its output has {one} classes for one image and {two} for "
                         f"two: campp explains classifiers (return the logits, one row per image)")
    return one
