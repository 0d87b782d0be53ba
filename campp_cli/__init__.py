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
    "explain": "cam",
    "list_methods": "methods",
    "register_method": "methods",
    "get_method": "methods",
    "channel_sum": "methods",
    "MethodInput": "methods",
    "cam_maps": "cam",
    "Explanation": "cam",
    "FeatureTap": "cam",
    "classify_file": "pipeline",
    "Options": "pipeline",
    "load_rgb": "io.decode",
    "overlay": "draw.panels",
    "colorize": "draw.panels",
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
