"""Eigen-CAM (Muhammad & Yeasin, IJCNN 2020): the first principal component of the activations.

Class-agnostic: the (h*w, K) activation matrix is centred (each channel's mean
over positions subtracted) and projected on its first right singular vector.
An SVD's sign is arbitrary, so campp picks the sign for which the projection
correlates positively with the channel sum of A (where the layer is most
active overall) when that sum decides it (it carries at least 1e-3 of the
activations' energy along the projection); where it does not (LayerNorm'd
tokens, whose channel sums are near 0, so that rounding would decide), the
projection's value of largest magnitude is made positive.

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
    return (proj * sign(proj, m)[:, None]).reshape(n, h, w)


#: How much of the activations' energy the channel sum must carry along the projection to decide its sign.
DECISIVE = 1e-3


def sign(proj, centred):
    """(N,) +1 or -1 for each (hw,) projection of the centred (N, hw, K) activations: the sign that makes it
    correlate positively with the channel sum t where t decides it, |p . t| >= DECISIVE |p| |M| sqrt(K)
    (a share of the activations' own energy, so that float rounding in t, about K * 6e-8 of it, cannot
    decide), else the sign that makes its value of largest magnitude positive (scikit-learn's ``svd_flip``
    rule), which rounding cannot flip unless two extremes of opposite signs tie."""
    import torch

    p = proj - proj.mean(dim=1, keepdim=True)
    total = centred.sum(dim=2)  # the channel sum, centred like every channel
    k = centred.shape[2]
    scale = p.norm(dim=1) * centred.flatten(1).norm(dim=1) * k ** 0.5
    along = (p * total).sum(dim=1)
    extreme = proj.gather(1, proj.abs().argmax(dim=1, keepdim=True))[:, 0]
    decided = torch.where(along.abs() >= DECISIVE * scale, along, extreme)
    return torch.where(decided < 0, -1.0, 1.0).to(proj.dtype)


@register_method("eigencam", title="Eigen-CAM", needs="activations", class_specific=False,
                 reference="Muhammad & Yeasin, IJCNN 2020, arXiv:2008.00299",
                 summary="projection of the centred (hw x K) activations on their first right singular vector")
def eigencam(inp):
    return projection(inp.acts)
