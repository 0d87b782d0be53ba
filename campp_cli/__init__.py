"""campp: Grad-CAM, Grad-CAM++ and more CAM methods for image classifiers, on PyTorch.

From a notebook::

    from campp_cli import load_classifier, explain_image, classify_file
    clf = load_classifier("efficientnet_lite0", device="cpu")
    explain_image("images/chelsea.png", clf)          # the comparison figure, inline
    result = classify_file("images/cat.jpg", clf, "output", "cat.jpeg")

Heavy modules (torch, OpenCV) load on first use, so ``campp --help`` stays instant.
"""

from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"

_EXPORTS = {
    "load_classifier": "models",
    "resolve_device": "models",
    "Classifier": "models",
    "Preprocessing": "preprocessing",
    "Overrides": "preprocessing",
    "PRESETS": "preprocessing",
    "register_source": "models",
    "list_sources": "models",
    "explain": "explain.cam",
    "list_methods": "explain.methods",
    "register_method": "explain.methods",
    "get_method": "explain.methods",
    "channel_sum": "explain.methods",
    "MethodInput": "explain.methods",
    "cam_maps": "explain.cam",
    "Explanation": "explain.cam",
    "FeatureTap": "explain.taps",
    "classify_file": "pipeline",
    "Options": "pipeline",
    "load_rgb": "images",
    "overlay": "images",
    "colorize": "images",
    "explain_image": "notebook",
    "ImageExplanation": "notebook",
    "CamppError": "errors",
    "UsageError": "errors",
    "InputError": "errors",
    "WeightsError": "errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'campp_cli' has no attribute {name!r}")


class _Package(types.ModuleType):
    """campp_cli itself, whose ``explain`` stays the function :func:`campp_cli.explain.cam.explain`.

    Importing a subpackage sets it as an attribute of its parent: without this, the first import of the
    ``campp_cli.explain`` package (which ``campp --help`` does, for the methods) would hide the function
    behind the package.  The package stays reachable as ever: ``from campp_cli.explain.cam import ...``.
    """

    def __setattr__(self, name: str, value) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType) and value.__name__ == f"{__name__}.{name}":
            return  # a subpackage named like an export: __getattr__ serves the export
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
