"""EigenGrad-CAM (as pytorch-grad-cam defines it): Eigen-CAM's projection of the gradient-weighted activations.

The (h*w, K) matrix of g * A (each channel's gradient times its activation,
position by position), centred per channel, is projected on its first right
singular vector.  Unlike Eigen-CAM it is class-specific: the gradient of the
explained class decides what the principal axis sees.  The sign follows
Eigen-CAM's rule applied to g * A: the projection correlates positively with
sum_k g_k A_k (HiResCAM's combination) where that sum decides it.
"""

from . import register_method
from .eigencam import projection


@register_method("eigengradcam", title="EigenGrad-CAM", reference="pytorch-grad-cam (Gildenblat et al.), "
                 "after Muhammad & Yeasin, IJCNN 2020, arXiv:2008.00299",
                 summary="first principal component of the centred (hw x K) matrix g * A")
def eigengradcam(inp):
    return projection(inp.grads * inp.acts)
