"""campp: Grad-CAM, Grad-CAM++ and more CAM methods for image classifiers, on PyTorch.

From a notebook::

    from campp_cli import load_classifier, explain_image, classify_file, Run
    clf = load_classifier("efficientnet_lite0", device="cpu")
    explain_image("images/chelsea.png", clf)          # the comparison figure, inline
    result = classify_file("images/cat.jpg", clf, "output", "cat.jpeg")
    Run("classify", ["images/"], classifier=clf, report="output/report.html").execute()   # what the CLI runs

Heavy modules (torch, OpenCV) load on first use, so ``campp --help`` stays instant.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "load_classifier": "models.loading",
    "resolve_device": "models.devices",
    "Classifier": "models.loading",
    "Preprocessing": "models.preprocessing",
    "Overrides": "models.preprocessing",
    "PRESETS": "models.preprocessing",
    "register_source": "models.spec",
    "list_sources": "models.spec",
    "explain": "cam.explain",
    "explain_top": "cam.explain",
    "explain_labels": "cam.explain",
    "logits_of": "cam.outputs",
    "list_methods": "cam.methods",
    "register_method": "cam.methods",
    "get_method": "cam.methods",
    "channel_sum": "cam.methods",
    "MethodInput": "cam.methods",
    "cam_maps": "cam.explain",
    "Explanation": "cam.explain",
    "FeatureTap": "cam.taps",
    "classify_file": "commands.classify",
    "Options": "run.options",
    "Run": "run.run",
    "Summary": "run.options",
    "Result": "run.options",
    "load_rgb": "io.decode",
    "overlay": "draw.panels",
    "colorize": "draw.panels",
    "explain_image": "notebook",
    "explain_images": "notebook",
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

