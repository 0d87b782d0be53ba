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
a full SVD: M v1 = s1 u1, so the projection is sqrt(lambda1) u1 or M v1.  And
only its top eigenpair is computed (:func:`top_eigenpair`).
"""

import functools

from . import register_method


def projection(acts):
    """(N, K, h, w) -> (N, h, w): the sign-fixed projection on the first principal axis."""

    n, k, h, w = acts.shape
    m = acts.reshape(n, k, h * w).transpose(1, 2)  # (N, hw, K)
    m = m - m.mean(dim=1, keepdim=True)
    if h * w <= k:  # top eigenvector of M M^T is u1, and M v1 = s1 u1
        value, vector = top_eigenpair(m @ m.transpose(1, 2))
        proj = vector * value[:, None].clamp(min=0).sqrt()
    else:  # top eigenvector of M^T M is v1
        _, vector = top_eigenpair(m.transpose(1, 2) @ m)
        proj = (m @ vector[..., None])[..., 0]  # (N, hw)
    return (proj * sign(proj, m)[:, None]).reshape(n, h, w)


def top_eigenpair(gram):
    """(N, n, n) symmetric -> the largest eigenvalue (N,) and its unit eigenvector (N, n).

    On the CPU in float64, with no gradient to carry, LAPACK's dsyevr computes that one pair only
    (scipy's ``eigh(subset_by_index=...)``, its OpenBLAS on one thread, so that its spinning threads do not
    slow down torch's): 1.0 ms instead of 3.8 ms for a full ``torch.linalg.eigh`` at 196 x 196, 17 ms
    instead of 119 ms at 784 x 784 (2 cores).  Elsewhere (CUDA, float32, differentiable maps, non-finite
    entries), the full decomposition's last pair."""
    import torch

    if gram.device.type != "cpu" or gram.dtype != torch.float64 or gram.requires_grad \
            or not bool(torch.isfinite(gram).all()):
        values, vectors = torch.linalg.eigh(gram)
        return values[:, -1], vectors[..., -1]
    import numpy as np
    import scipy.linalg

    last = gram.shape[-1] - 1
    with _lapack_threads().limit(limits=1, user_api="blas"):
        pairs = [scipy.linalg.eigh(g, subset_by_index=[last, last], driver="evr", check_finite=False)
                 for g in gram.numpy()]
    values = torch.from_numpy(np.array([value[0] for value, _ in pairs]))
    vectors = torch.from_numpy(np.stack([vector[:, 0] for _, vector in pairs]))
    return values, vectors


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


@functools.cache
def _lapack_threads():
    """threadpoolctl's controller of the BLAS libraries loaded once scipy.linalg is (made once: it scans them)."""
    import scipy.linalg  # noqa: F401  (its OpenBLAS loaded first)
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()
