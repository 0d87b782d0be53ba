"""FullGrad (Srinivas & Fleuret, NeurIPS 2019, arXiv:1905.00780): input-gradients and every layer's bias-gradients.

A ReLU network's score is exactly S = x . dS/dx + sum over layers and positions of b * dS/dz (the
full-gradient decomposition, in eval mode).  FullGrad's map adds up each part made visible:

    map = psi(x * dS/dx) + sum_l psi(b_l * dS/dz_l),   psi(t) = upsample(sum_c rescale(|t|)_c)

where z_l is the output of a layer with a bias (every ``nn.Conv2d`` with one and every batch norm, whose
bias in eval mode is beta - mean * gamma / sqrt(var + eps): :func:`campp_cli.cam.taps.bias_layers`),
``rescale`` subtracts the term's minimum and divides by its maximum (+ 1e-6) per image over all its
channels and positions, and ``upsample`` is bilinear with aligned corners to the input's size, as the
paper's official code (idiap/fullgrad-saliency) does.  The map ignores ``--layer``: it is at the model
input's resolution and made of every layer.  Its gradients come from the shared pass, whose backward goes
on from the layer to the input (one backward through the whole model, no extra forward).  With
``eigen_smooth`` the map is the first principal component of the parts instead of their sum (as
pytorch-grad-cam's).  pytorch-grad-cam's FullGrad rescales each channel of each term on its own (the
official code rescales the term as a whole), resizes with OpenCV (half-pixel centres, not aligned
corners) and takes only layers whose type is exactly ``Conv2d`` or ``BatchNorm2d``.
"""

from . import eigen_smoothed, register_method, terms_sum

#: The official code's guard in its rescaling.
EPS = 1e-6


def rescaled(term):
    """The term's magnitude rescaled (minus its minimum, divided by its maximum + eps, per image over all its
    channels and positions: the official ``_postProcess``) and summed over its channels: (N, h, w), float64.
    Rescaling is affine, so the sum is (sum_c |t_c| - C min) / (max - min + eps), made from |t|'s channel
    sum, minimum and maximum without a rescaled copy of the term (nor a contiguous one of a channels-last
    term)."""
    import torch

    magnitude = term.abs()
    low = magnitude.amin(dim=(1, 2, 3)).double()[:, None, None]
    high = magnitude.amax(dim=(1, 2, 3)).double()[:, None, None] - low
    return (magnitude.sum(dim=1, dtype=torch.float64) - term.shape[1] * low) / (high + EPS)


def upsampled(part, size):
    """A part at ``size``: bilinear, aligned corners, as the official code."""
    import torch.nn.functional as F

    if tuple(part.shape[-2:]) == tuple(size):
        return part
    return F.interpolate(part[:, None], size=tuple(size), mode="bilinear", align_corners=True)[:, 0]


@register_method("fullgrad", title="FullGrad", uses=("biases",),
                 reference="Srinivas & Fleuret, NeurIPS 2019, arXiv:1905.00780",
                 summary="|x dS/dx| + sum over layers of |b dS/dz|, each rescaled and upsampled (input resolution)")
def fullgrad(inp):
    import torch

    inputs, terms = inp.biases
    size = inputs.shape[-2:]
    if eigen_smoothed():  # a principal component needs every part at once
        return terms_sum(torch.stack([rescaled(inputs)] + [upsampled(rescaled(t), size) for t in terms], dim=1))
    # Interpolation is linear: the parts of one grid are added up first, then upsampled once (a ResNet-50
    # has 53 parts on 5 grids); channels are summed before it for the same reason
    grids: dict = {}
    for term in terms:
        part = rescaled(term)
        key = tuple(part.shape[-2:])
        grids[key] = part if key not in grids else grids[key] + part
    total = rescaled(inputs)
    for part in grids.values():
        total = total + upsampled(part, size)
    return total
