"""What a model's forward returns, as the (N, classes) logits campp explains.

A classifier may return its logits as a tensor, or inside a dict or a Hugging Face ``ModelOutput``
(``out["logits"]``), a tuple or namedtuple (Hugging Face's ``return_dict=False``, torchvision's
auxiliary-logit outputs: the logits first) or a dataclass.  ``key`` picks the entry: a name, or an index
of a tuple; without it, a mapping's or dataclass's ``logits`` (or its only entry) and a tuple's first.

:class:`LogitsOutput` makes ``model(x)`` itself return the logits while it is active (a forward hook on
the model, removed on exit); :func:`keep_logits_output` installs one for good on a model campp loaded, so
that every pass (the explaining pass, Score-CAM's, guided backpropagation, evaluate's perturbations) sees
logits.  A tensor output is always passed through unchanged.  Importing this module does not import torch
(the CLI checks ``--output-key`` before any slow import).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ..errors import ModelError, UsageError

if TYPE_CHECKING:
    import torch

#: The entry a mapping or dataclass output is read from unless told otherwise (Hugging Face's name).
DEFAULT_KEY = "logits"


def parse_key(text: "str | int | None") -> "str | int | None":
    """``--output-key``'s text: digits are a tuple's index, anything else a name."""
    if text is None or isinstance(text, int):
        return text
    text = str(text).strip()
    if not text:
        raise UsageError("give a name (logits) or an index (0)", param="output_key", value=text)
    return int(text) if text.isascii() and text.isdigit() else text


def _entries(output) -> "tuple[str, dict | list] | None":
    """``(kind, entries)`` of a structured output: a name -> value dict, or a list; None for anything else."""
    if isinstance(output, Mapping):  # dict, OrderedDict, Hugging Face's ModelOutput
        return "dict", {str(k): v for k, v in output.items()}
    if dataclasses.is_dataclass(output) and not isinstance(output, type):
        return "dataclass", {f.name: getattr(output, f.name) for f in dataclasses.fields(output)}
    if isinstance(output, Sequence) and not isinstance(output, (str, bytes)):
        fields = getattr(output, "_fields", None)  # a namedtuple: its entries by name too
        return ("namedtuple", dict(zip(fields, output))) if fields else ("tuple", list(output))
    return None


def _pick(kind: str, entries, key):
    """``(name, value)`` of the entry ``key`` names (the default one when None), or a usage error listing
    what there is."""
    named = isinstance(entries, dict)
    values = list(entries.values()) if named else entries
    names = ", ".join(entries if named else map(str, range(len(entries)))) or "none"
    if key is None:
        if named and DEFAULT_KEY in entries:
            return DEFAULT_KEY, entries[DEFAULT_KEY]
        if not named or kind == "namedtuple" or len(values) == 1:
            key = 0
        else:
            raise UsageError(f"the model returns a {kind} with no {DEFAULT_KEY!r} entry: give the one holding "
                             f"the logits, one of: {names}", param="output_key")
    if isinstance(key, int) and kind in ("tuple", "namedtuple", "dict" if len(values) == 1 else ""):
        if 0 <= key < len(values):
            return (list(entries)[key] if named else key), values[key]
    elif named and str(key) in entries:
        return str(key), entries[str(key)]
    raise UsageError(f"the model's {kind} output has no entry {key!r}; it has: {names}", param="output_key",
                     value=key)


def logits_of(output, key: "str | int | None" = None) -> torch.Tensor:
    """The logits in a model's ``output`` (see the module's text); a tensor is returned as it is."""
    import torch

    if isinstance(output, torch.Tensor):
        return output
    found = _entries(output)
    if found is None:
        raise ModelError(f"the model returns a {type(output).__name__}: campp explains a tensor of logits, or "
                         f"one in a dict, tuple or dataclass (see --output-key)")
    kind, entries = found
    name, value = _pick(kind, entries, key)
    if not isinstance(value, torch.Tensor):
        names = ", ".join(entries if isinstance(entries, dict) else map(str, range(len(entries))))
        raise UsageError(f"the model's {kind} entry {name!r} is a "
                         f"{type(value).__name__}, not a tensor of logits; its entries: {names}",
                         param="output_key", value=key)
    return value


class _ToLogits:
    """The forward hook: the model's output as its logits (a class, so a model holding it pickles)."""

    def __init__(self, key):
        self.key = key

    def __call__(self, module, inputs, output):
        return logits_of(output, self.key)


class LogitsOutput:
    """Context manager: ``model(x)`` returns the logits of its output (see :func:`logits_of`) while active.

    A model whose output already is a tensor is left as it is (the hook passes tensors through).
    """

    def __init__(self, model: torch.nn.Module, key: "str | int | None" = None):
        self.model, self.key = model, parse_key(key)
        self._handle = None

    def __enter__(self) -> "LogitsOutput":
        self._handle = self.model.register_forward_hook(_ToLogits(self.key))
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


_KEPT = "_campp_logits_output"  # the attribute that holds the handle of the hook keep_logits_output installed


def keep_logits_output(model: torch.nn.Module, key: "str | int | None" = None) -> torch.nn.Module:
    """Make ``model(x)`` return its logits for good (a model campp loaded); a second call replaces the first's
    key.  Registered first, the hook runs before any hook a caller adds later."""
    old = getattr(model, _KEPT, None)
    if old is not None:
        old.remove()
    setattr(model, _KEPT, model.register_forward_hook(_ToLogits(parse_key(key)), prepend=True))
    return model
