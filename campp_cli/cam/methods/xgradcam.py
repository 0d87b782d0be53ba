"""XGradCAM (Fu et al., BMVC 2020, arXiv:2008.02312): gradients weighted by the normalised activations."""

from . import channel_sum, nonzero, register_method


@register_method("xgradcam", title="XGrad-CAM", reference="Fu et al., BMVC 2020, arXiv:2008.02312",
                 summary="w_k = sum_ij A_kij g_kij / sum_ij A_kij (0 where sum_ij A_kij = 0)")
def xgradcam(inp):
    total = inp.acts.sum(dim=(2, 3))
    weighted = (inp.acts * inp.grads).sum(dim=(2, 3))
    w = (weighted / nonzero(total)).where(total != 0, total.new_zeros(()))
    return channel_sum(w, inp.acts)
