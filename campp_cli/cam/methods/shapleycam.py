"""ShapleyCAM (Cai, 2025, arXiv:2501.06261): gradient and Hessian-vector product, a Shapley-value view of CAM.

The weight of channel k is the spatial mean of g - H A / 2, where H A is the
Hessian of the class score with respect to A applied to A (a second backward
pass, from the gradient the shared pass computes).  Where the score is
piecewise linear in A beyond the layer (ReLU, max-pooling and linear layers
only), H A = 0 and ShapleyCAM is Grad-CAM; it differs where the head has
curvature (softmax scores, GELU, attention).  The pass reads that from its
autograd graph (:func:`campp_cli.cam.explain.piecewise_linear`) and then
runs no second backward.
"""

from . import channel_sum, register_method


@register_method("shapleycam", title="ShapleyCAM", uses=("hvp",),
                 reference="Cai, 2025, arXiv:2501.06261",
                 summary="w_k = mean_ij (g - H A / 2)_kij, H A the Hessian-vector product of the score")
def shapleycam(inp):
    return channel_sum((inp.grads - 0.5 * inp.hvp).mean(dim=(2, 3)), inp.acts)
