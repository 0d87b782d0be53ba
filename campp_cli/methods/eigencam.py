"""Eigen-CAM (Muhammad & Yeasin, IJCNN 2020): the first principal component of the activations.

Class-agnostic: the (h*w, K) activation matrix is centred (each channel's mean
over positions subtracted) and projected on its first right singular vector.
An SVD's sign is arbitrary, so campp picks the sign for which the projection
correlates positively with the channel sum of A (where the layer is most
active overall); with zero correlation the sign found is kept.

Only the first singular pair is needed, so it comes from the symmetric
eigendecomposition of the smaller Gram matrix (hw x hw or K x K) rather than
a full SVD: M v1 = s1 u1, so the projection is sqrt(lambda1) u1 or M v1.
"""

from . import register_method


def projection(acts):
    """(N, K, h, w) -> (N, h, w): the sign-fixed projection on the first principal axis."""
    import torch

    n, k, h, w = acts.shape
    m = acts.reshape(n, k, h * w).transpose(1, 2)  # (N, hw, K)
    m = m - m.mean(dim=1, keepdim=True)
    if h * w <= k:  # top eigenvector of M M^T is u1, and M v1 = s1 u1
        values, vectors = torch.linalg.eigh(m @ m.transpose(1, 2))
        proj = vectors[..., -1] * values[:, -1:].clamp(min=0).sqrt()
    else:  # top eigenvector of M^T M is v1
        _, vectors = torch.linalg.eigh(m.transpose(1, 2) @ m)
        proj = (m @ vectors[..., -1:])[..., 0]  # (N, hw)
    total = acts.sum(dim=1).reshape(n, h * w)
    corr = ((proj - proj.mean(dim=1, keepdim=True)) * (total - total.mean(dim=1, keepdim=True))).sum(dim=1)
    sign = torch.where(corr < 0, -1.0, 1.0).to(proj.dtype)
    return (proj * sign[:, None]).reshape(n, h, w)


@register_method("eigencam", title="Eigen-CAM", needs="activations", class_specific=False,
                 reference="Muhammad & Yeasin, IJCNN 2020, arXiv:2008.00299",
                 summary="projection of the centred (hw x K) activations on their first right singular vector")
def eigencam(inp):
    return projection(inp.acts)
