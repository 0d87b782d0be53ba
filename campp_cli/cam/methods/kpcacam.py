"""KPCA-CAM (Karmani et al. 2024, arXiv:2410.00267): Eigen-CAM with a kernel principal component.

The h*w positions' activation vectors x_i (each channel centred over the
positions) are compared with the sigmoid kernel k(x, y) = tanh(x.y / K + 1)
(scikit-learn's ``KernelPCA(kernel="sigmoid")`` defaults, which
pytorch-grad-cam's KPCA_CAM uses: gamma = 1/K, coef0 = 1); the kernel matrix is
centred in feature space and the map is each position's coordinate on the
first kernel principal component (top eigenvector times the square root of
its eigenvalue).  Class-agnostic, one forward pass.  The sign follows
Eigen-CAM's rule (positive correlation with the channel sum where it decides
it); scikit-learn instead makes the largest-magnitude value positive.
"""

from . import register_method
from .eigencam import centred_positions, sign, top_eigenpair


def projection(acts, shared: dict | None = None):
    """(N, K, h, w) -> (N, h, w): the sign-fixed coordinates on the first kernel principal component
    (``shared``: see :func:`campp_cli.cam.methods.eigencam.centred_positions`)."""
    import torch

    n, k, h, w = acts.shape
    x, linear = centred_positions(acts, shared, gram=True)  # (N, hw, K) and x x^T
    energy = linear.diagonal(dim1=1, dim2=2).sum(dim=1)
    gram = torch.tanh(linear / k + 1.0)
    gram = gram - gram.mean(dim=1, keepdim=True)  # centred in feature space: K - 1K - K1 + 1K1
    gram = gram - gram.mean(dim=2, keepdim=True)
    value, vector = top_eigenpair(gram)
    proj = vector * value[:, None].clamp(min=0).sqrt()
    return (proj * sign(proj, x, energy)[:, None]).reshape(n, h, w)


@register_method("kpcacam", title="KPCA-CAM", needs="activations", class_specific=False,
                 reference="Karmani et al. 2024, arXiv:2410.00267",
                 summary="first kernel principal component (sigmoid kernel) of the (hw x K) activations")
def kpcacam(inp):
    return projection(inp.acts, inp.shared)
