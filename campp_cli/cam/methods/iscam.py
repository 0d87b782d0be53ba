"""IS-CAM (Naidu et al. 2020, arXiv:2010.03023): Score-CAM integrated along the mask's scale.

With M_k Score-CAM's mask of channel k, the i-th of ``iscam_steps`` = n
masks is the running sum M^(i) = sum_{j<=i} (j/n) M_k (the paper's
Algorithm 1 accumulates the mask; torchcam's ISCAM does the same), and the
weight is the mean over i of the softmax probability of the explained class
for the image masked by M^(i).  Constant channels get weight 0 without a
pass.  It costs n times Score-CAM's passes.  torchcam then takes a softmax
over the channels' logit gains instead of the probabilities.
"""

from ...registry import Setting
from . import channel_sum, register_method
from .scorecam import SCORE_BATCH, weights

#: ``iscam_steps=`` (``--iscam-steps``).
STEPS = Setting("iscam_steps", int, "N", "IS-CAM: steps of the integration along each mask's scale.",
                minimum=1, maximum=1000, default=10)


def scales(n: int) -> list[float]:
    """The factor of M_k in each of IS-CAM's ``n`` masks: sum_{j<=i} j/n for i = 1..n."""
    return [sum(j / n for j in range(1, i + 1)) for i in range(1, n + 1)]


@register_method("iscam", title="IS-CAM", needs="forward passes", settings=(SCORE_BATCH, STEPS),
                 reference="Naidu et al. 2020, arXiv:2010.03023",
                 cost="one forward + K x iscam_steps extra forward passes per image",
                 summary="Score-CAM weights averaged over growing multiples of each mask")
def iscam(inp):
    factors = scales(inp.settings["iscam_steps"])
    return channel_sum(weights(inp, len(factors), lambda mask, j: mask * factors[j], "iscam"), inp.acts)
