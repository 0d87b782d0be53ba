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

_HOOKS = "_campp_precision"  # the attribute holding (name, handles) of the hooks set_precision installed


def check_precision(name: str) -> str:
    """``name`` if it is one of :data:`PRECISIONS`, else a usage error naming ``precision``."""
    if name not in PRECISIONS:
        raise UsageError(f"choose from {', '.join(PRECISIONS)}{suggest(str(name), PRECISIONS)}",
                         param="precision", value=name)
    return name


def precision_of(module) -> str:
    """The precision :func:`set_precision` gave ``module`` (``fp32`` if none)."""
    kept = getattr(module, _HOOKS, None)
    return "fp32" if kept is None else kept[0]


def set_precision(module, name: str = "fp32"):
    """Run ``module``'s forward passes in precision ``name`` from now on (``fp32``: as it is), in place;
    returns ``module``.  A second call replaces the first.  The autocast is entered by a forward pre-hook
    and left by a forward hook that also runs when the forward raises (``always_call``), so an error
    leaves no autocast behind; the output, a floating tensor, is returned as float32."""
    check_precision(name)
    kept = getattr(module, _HOOKS, None)
    if kept is not None:
        for handle in kept[1]:
            handle.remove()
        delattr(module, _HOOKS)
    if name == "fp32":
        return module
    import torch

    hooks = _Autocast(getattr(torch, _DTYPES[name]))
    handles = (module.register_forward_pre_hook(hooks.enter, prepend=True),
               module.register_forward_hook(hooks.leave, always_call=True))  # after keep_logits_output's
    setattr(module, _HOOKS, (name, handles))
    return module


class _Autocast:
    """The pair of hooks of :func:`set_precision`: ``torch.autocast`` on the device of the module's
    parameters, entered before its forward and left after it (a stack, for a module that calls itself)."""

    def __init__(self, dtype):
        self.dtype = dtype
        self.open: list = []

    def enter(self, module, args):
        import torch

        found = next(module.parameters(), None)
        device = found.device.type if found is not None else "cpu"
        context = torch.autocast(device_type=device, dtype=self.dtype)
        context.__enter__()
        self.open.append(context)

    def leave(self, module, args, output):
        import torch

        if self.open:
            self.open.pop().__exit__(None, None, None)
        if isinstance(output, torch.Tensor) and output.is_floating_point() and output.dtype == self.dtype:
            return output.float()
        return output
