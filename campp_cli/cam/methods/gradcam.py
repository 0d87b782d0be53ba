"""Grad-CAM (Selvaraju et al., ICCV 2017): each channel weighted by the spatial mean of its gradient."""

from . import channel_sum, register_method


@register_method("gradcam", title="Grad-CAM", reference="Selvaraju et al., ICCV 2017, arXiv:1610.02391",
                 summary="w_k = mean_ij g_kij; relu(sum_k w_k A_k)")
def gradcam(inp):
    return channel_sum(inp.grads.mean(dim=(2, 3)), inp.acts)
