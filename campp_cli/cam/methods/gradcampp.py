"""Grad-CAM++ (Chattopadhyay et al., WACV 2018, arXiv:1710.11063), two variants.

* ``official``: what the authors' code computes (github.com/adityac94/Grad_CAM_plus_plus,
  ``misc/utils.py``, ``grad_CAM_plus`` at commit 65653fe, 2018-05-25, "improved heatmap
  generation"): eq. 19's alphas (a zero denominator replaced by 1), then per channel
  renormalised to sum to 1 over the positions where g > 0.  Their first release
  (a467cf1, 2017-10-26) divided by the sum over all positions instead.
* ``paper``: eq. 19 as printed, no renormalisation; alpha = 0 where g = 0 and where
  eq. 19's denominator is 0 (it is undefined there).
  This is what pytorch-grad-cam's ``GradCAMPlusPlus`` computes (up to its
  epsilon).  torchcam 0.5.0's ``GradCAMpp`` is neither: its in-place division
  lands on a masked copy, so its alphas stay g^2 (weights sum_ij relu(g)^3).

The paper writes the derivatives of exp(S); the exp(S) factors cancel out of
alpha and only scale the weights, which the max-normalisation removes, so
exp(S) is never evaluated (it overflows float32 past S ~ 88).
"""

from ...registry import Setting
from . import channel_sum, nonzero, register_method

#: The two Grad-CAM++ variants.
VARIANTS = ("official", "paper")

#: ``variant=`` (``--variant``): which alphas.
VARIANT = Setting("variant", str, "NAME",
                  "Grad-CAM++ alphas: 'official' as the authors' code (renormalised), 'paper' as eq. 19.",
                  default="official", choices=VARIANTS)


def alphas(grads, acts, variant: str = "official"):
    """Grad-CAM++ pixel weights alpha (eq. 19 with the exp(S) factors cancelled; the official code's
    guard against 0/0)."""
    VARIANT.check(variant)
    g2 = grads * grads
    g3 = g2 * grads
    act_sum = acts.sum(dim=(2, 3), keepdim=True)
    denominator = 2.0 * g2 + act_sum * g3
    alpha = g2 / nonzero(denominator)  # alpha = 0 wherever g = 0
    if variant == "official":  # the authors' code: a zero denominator becomes 1, then the renormalisation
        norm = (alpha * (grads > 0)).sum(dim=(2, 3), keepdim=True)
        return alpha / nonzero(norm)
    return alpha.where(denominator != 0, alpha.new_zeros(()))  # eq. 19 is undefined there: no weight


def weights(grads, acts, variant: str = "official"):
    """``sum_ij alpha_kij relu(g_kij)``, (N, K)."""
    return (alphas(grads, acts, variant) * grads.clamp(min=0)).sum(dim=(2, 3))


@register_method("gradcampp", title="Grad-CAM++", reference="Chattopadhyay et al., WACV 2018, arXiv:1710.11063",
                 summary="w_k = sum_ij alpha_kij relu(g_kij), alpha from eq. 19 (--variant official|paper)",
                 settings=(VARIANT,))
def gradcampp(inp):
    return channel_sum(weights(inp.grads, inp.acts, inp.settings["variant"]), inp.acts)
