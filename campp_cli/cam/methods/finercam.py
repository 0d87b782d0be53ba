"""Finer-CAM (Zhang et al., CVPR 2025, arXiv:2501.11309): what tells the class from its closest rivals.

Grad-CAM of a contrastive target instead of the class logit y_c: the
comparison classes j are the ``finer_rivals`` classes whose logits are
closest to y_c, and the target is sum_j p_j (y_c - alpha y_j) / sum_j p_j
(p = softmax of the logits, alpha = ``finer_alpha``), as pytorch-grad-cam's
FinerCAM computes it (without its 1e-9 in the denominator).  Its gradient
comes from the shared backward pass, as one more column.  alpha = 0 is
Grad-CAM of the class logit, as the paper notes, and so is a model of one
output, which has no rival (the authors' code falls back to the class score
then).
"""

from ...registry import Setting
from . import channel_sum, register_method

#: ``finer_alpha=`` (``--finer-alpha``).
ALPHA = Setting("finer_alpha", float, "A", "Finer-CAM: how much of the rival classes' logits is subtracted "
                "(0: Grad-CAM).", minimum=0.0, maximum=10.0, default=1.0)

#: ``finer_rivals=`` (``--finer-rivals``).
RIVALS = Setting("finer_rivals", int, "N", "Finer-CAM: how many of the classes closest to the explained one "
                 "it compares with.", minimum=1, maximum=100, default=3)


def target(logits, classes, settings):
    """(N,) Finer-CAM's score of ``classes`` in the (N, C) ``logits``."""
    import torch

    c = logits.shape[1]
    rivals = min(int(settings["finer_rivals"]), c - 1)
    y = logits.double()
    own = y.gather(1, classes[:, None])
    if rivals < 1:  # one output: no rival, the class score itself
        return own[:, 0].to(logits.dtype)
    gap = (y - own).abs().detach()
    gap = gap.scatter(1, classes[:, None], float("inf"))  # the class itself is no rival
    order = torch.sort(gap, dim=1, stable=True).indices[:, :rivals]
    p = torch.softmax(y, dim=1).gather(1, order)
    rival = y.gather(1, order)
    return ((p * (own - settings["finer_alpha"] * rival)).sum(dim=1) / p.sum(dim=1)).to(logits.dtype)


@register_method("finercam", title="Finer-CAM", target=target, settings=(ALPHA, RIVALS),
                 reference="Zhang et al., CVPR 2025, arXiv:2501.11309",
                 summary="Grad-CAM of sum_j p_j (y_c - alpha y_j) / sum_j p_j over the closest rival classes j")
def finercam(inp):
    return channel_sum(inp.grads.mean(dim=(2, 3)), inp.acts)
