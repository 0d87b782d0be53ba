"""Grad-CAM element-wise (pytorch-grad-cam's GradCAMElementWise): HiResCAM with each product rectified."""

from . import register_method, terms_sum


@register_method("gradcam_elementwise", title="Grad-CAM elem.",
                 reference="pytorch-grad-cam's GradCAMElementWise (Gildenblat et al.)",
                 summary="sum_k relu(g_k * A_k)")
def gradcam_elementwise(inp):
    return terms_sum((inp.grads * inp.acts).clamp(min=0))
