"""Guided backpropagation (Springenberg et al., 2015): the input gradient through rectified ReLUs."""

from __future__ import annotations

import numpy as np
import torch

from .explain import class_tensor, model_input
from .outputs import LogitsOutput
from .taps import FrozenParameters
from .targets import target_scores

#: The rectifiers guided backpropagation rectifies: ReLU and ReLU6 (MobileNet's and EfficientNet-Lite's; its
#: own backward already passes gradient only where its input lies in (0, 6)).
RECTIFIERS = (torch.nn.ReLU, torch.nn.ReLU6)


class GuidedReLU:
    """Context manager: every ``nn.ReLU`` (and ``nn.ReLU6``) passes gradient back only where both its
    input and the incoming gradient are positive (Springenberg et al., 2015).

    In-place ReLUs are made out-of-place while it is active (backward hooks
    cannot see in-place outputs); flags and hooks are restored on exit.
    """

    def __init__(self, model: torch.nn.Module):
        self.relus = [m for m in model.modules() if isinstance(m, RECTIFIERS)]
        self._handles = []
        self._inplace: list[bool] = []

    @staticmethod
    def _hook(module, grad_input, grad_output):
        # ReLU's own backward already zeroed the gradient where its input <= 0.
        return (torch.clamp(grad_input[0], min=0.0),)

    def __enter__(self) -> "GuidedReLU":
        self._inplace = [m.inplace for m in self.relus]
        for m in self.relus:
            m.inplace = False
            self._handles.append(m.register_full_backward_hook(self._hook))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        for m, flag in zip(self.relus, self._inplace):
            m.inplace = flag


def guided_backprop(model: torch.nn.Module, rgb01: torch.Tensor, classes, preprocess=None,
                    output_key=None, score: str = "logit", activation: str = "softmax") -> np.ndarray:
    """Guided-backpropagation gradient of each image's class logit w.r.t. the RGB image, ``(N, 3, H, W)``.

    ``rgb01`` is the batch before normalisation and ``preprocess`` the model's
    normalisation, so the gradient's channels are RGB whatever the model eats
    (the Caffe VGG16 eats BGR).  A second, full backward pass: run only when asked.  ``output_key``: see
    :func:`campp_cli.cam.outputs.logits_of`; ``score``: the class's score differentiated, as in
    :func:`campp_cli.cam.explain.explain` (and ``activation``).
    """
    with torch.inference_mode(False):
        x = rgb01.detach().clone().requires_grad_(True)
    with torch.inference_mode(False), torch.enable_grad(), FrozenParameters(model), GuidedReLU(model), \
            LogitsOutput(model, output_key):
        logits = model(model_input(model, preprocess(x) if preprocess is not None else x))
        idx = class_tensor(classes, logits.detach())
        (grad,) = torch.autograd.grad(target_scores(logits, idx[:, None], score, activation).sum(), x)
    return grad.detach().float().cpu().numpy()
