"""``--precision``: the arithmetic of the model's passes, one place for every pass campp runs.

``fp32`` (the default) runs the model as it is.  ``bf16`` and ``fp16`` run each of its forward passes
under ``torch.autocast`` to that dtype (convolutions and products in half precision, reductions and
softmax where autocast keeps float32), so that every pass campp makes of a loaded model (the explaining
pass, Score-CAM's and Ablation-CAM's extra passes, guided backpropagation, ``evaluate``'s perturbations)
uses the same arithmetic; the backward passes follow the dtypes their forward recorded.  The model's
output comes back as float32 and the maps are computed in float64 from the activations and gradients,
whatever the precision.  Half precision changes the maps by more than float rounding: the README gives
the largest difference measured and says when each is safe.

The names are here, importable without torch (the CLI's choices come from :data:`PRECISIONS`); the
autocast is installed on a module by :func:`set_precision` (which ``load_classifier(precision=...)`` calls).
"""

from __future__ import annotations

from ..errors import UsageError, suggest

#: --precision: name -> what it does (the CLI's choices and help).
PRECISIONS = {
    "fp32": "float32 throughout (the default: maps to float32 rounding, the same on every device)",
    "bf16": "the model's passes under autocast to bfloat16 (float32's range, 8 bits of mantissa)",
    "fp16": "autocast to float16 (11 bits of mantissa; values beyond 65504 overflow, gradients may underflow)",
}

#: The torch dtype of each half precision, by name (fp32 installs nothing).
_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


def check_precision(name: str | None) -> str:
    """``name`` if it is one of :data:`PRECISIONS` (None: ``fp32``), else a usage error naming ``precision``."""
    if name is None:
        return "fp32"
    if name not in PRECISIONS:
        raise UsageError(f"choose from {', '.join(PRECISIONS)}{suggest(str(name), PRECISIONS)}",
                         param="precision", value=name)
    return name


def precision_of(module) -> str:
    """The precision :func:`set_precision` gave ``module`` (``fp32`` if none)."""
    found = module.__dict__.get("forward")
    return found.precision if isinstance(found, _AutocastForward) else "fp32"


def set_precision(module, name: str | None = "fp32"):
    """Run ``module``'s forward passes in precision ``name`` from now on (``fp32`` or None: as it is), in
    place; returns ``module``.  A second call replaces the first.  The module's ``forward`` is wrapped (an
    attribute of the instance: its class, state dict, hooks and names stay as they are) in ``with
    torch.autocast(...)``, on the device of its first tensor argument: per thread, and left whatever
    ends the call (an error, Ctrl-C).  Half-precision floating tensors of the output (also inside a
    dict, list or tuple) are returned as float32."""
    name = check_precision(name)
    found = module.__dict__.get("forward")
    if isinstance(found, _AutocastForward):
        if found.inner is None:
            del module.forward
        else:
            module.forward = found.inner
    if name == "fp32":
        return module
    import torch

    module.forward = _AutocastForward(module, name, getattr(torch, _DTYPES[name]), module.__dict__.get("forward"))
    return module


class _AutocastForward:
    """The forward :func:`set_precision` installs: the module's own (or the one the instance had) under
    ``torch.autocast``.  A plain object holding the module, so that deepcopy and pickle copy it with it."""

    def __init__(self, module, precision: str, dtype, inner=None):
        self.module, self.precision, self.dtype, self.inner = module, precision, dtype, inner

    def __call__(self, *args, **kwargs):
        import torch

        device = next((a.device.type for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
        if device is None:
            found = next(self.module.parameters(), None)
            device = found.device.type if found is not None else "cpu"
        with torch.autocast(device_type=device, dtype=self.dtype):
            out = self.inner(*args, **kwargs) if self.inner is not None else \
                type(self.module).forward(self.module, *args, **kwargs)
        return _float32(out, self.dtype)


def _float32(out, dtype):
    """``out`` with its tensors of ``dtype`` as float32: a tensor, or inside a dict (in place, as a Hugging
    Face ModelOutput is), a list or a tuple (a named tuple too)."""
    import torch

    if isinstance(out, torch.Tensor):
        return out.float() if out.dtype == dtype else out
    if isinstance(out, dict):
        for k, v in list(out.items()):
            out[k] = _float32(v, dtype)
        return out
    if isinstance(out, list):
        return [_float32(v, dtype) for v in out]
    if isinstance(out, tuple):
        items = [_float32(v, dtype) for v in out]
        return type(out)(*items) if hasattr(out, "_fields") else type(out)(items)
    return out
