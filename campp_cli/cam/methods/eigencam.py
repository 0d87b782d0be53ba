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


def projection(acts, shared: dict | None = None):
    """(N, K, h, w) -> (N, h, w): the sign-fixed projection on the first principal axis.  ``shared``: where
    the centred activations are kept for the pass's other methods (:func:`centred_positions`)."""
    n, k, h, w = acts.shape
    m, gram = centred_positions(acts, shared, gram=h * w <= k)  # (N, hw, K)
    if gram is None:  # top eigenvector of M^T M is v1
        gram = m.transpose(1, 2) @ m
        _, vector = top_eigenpair(gram)
        proj = (m @ vector[..., None])[..., 0]  # (N, hw)
    else:  # top eigenvector of M M^T is u1, and M v1 = s1 u1
        value, vector = top_eigenpair(gram)
        proj = vector * value[:, None].clamp(min=0).sqrt()
    energy = gram.diagonal(dim1=1, dim2=2).sum(dim=1)  # |M|^2, the trace of either Gram matrix
    return (proj * sign(proj, m, energy)[:, None]).reshape(n, h, w)


def centred_positions(acts, shared: dict | None = None, gram: bool = False):
    """(N, K, h, w) -> the (N, hw, K) matrix of the positions' activation vectors, each channel centred over
    the positions, and with ``gram`` its (N, hw, hw) inner products M M^T (else None).  Kept in ``shared``
    (:attr:`campp_cli.cam.methods.MethodInput.shared`, one pass's activations), where Eigen-CAM and
    KPCA-CAM find what the other computed: 0.6 ms of VGG16's pass (512 x 14 x 14) when both run."""
    found = None if shared is None else shared.get("centred positions")
    if found is None:
        n, k, h, w = acts.shape
        m = acts.reshape(n, k, h * w).transpose(1, 2)
        found = [m - m.mean(dim=1, keepdim=True), None]
        if shared is not None:
            shared["centred positions"] = found
    if gram and found[1] is None:
        found[1] = found[0] @ found[0].transpose(1, 2)
    return found[0], (found[1] if gram else None)


#: From this size on, the top eigenpair comes from Lanczos iterations (ARPACK), below it from LAPACK's
#: dsyevr; the kernel matrix of 256 channels of random activations, 2 cores: 1.1 ms (dsyevr) against
#: 1.6 ms (Lanczos) at 196 x 196, 26 ms against 8 ms at 784 x 784, 2.4 s against 0.26 s at 3136 x 3136
#: (a full torch.linalg.eigh: 2.7 ms, 66 ms and 4.7 s).
LANCZOS_FROM = 257
#: Below this size scipy's OpenBLAS runs on one thread: its threads spin after a call and slow torch's
#: down, and at these sizes they gain nothing.
THREADED_FROM = 1024


def top_eigenpair(gram):
    """(N, n, n) symmetric -> the largest eigenvalue (N,) and its unit eigenvector (N, n).

    On the CPU in float64, with no gradient to carry, that one pair only: LAPACK's dsyevr
    (``scipy.linalg.eigh(subset_by_index=...)``) up to LANCZOS_FROM, then Lanczos iterations
    (``scipy.sparse.linalg.eigsh(k=1, tol=0)``, to machine precision, from a fixed start vector so that the
    same matrix always gives the same vector; dsyevr if they do not converge).  Elsewhere (CUDA, float32,
    differentiable maps, non-finite entries), the full ``torch.linalg.eigh`` 's last pair."""
    import numpy as np
    import torch

    if gram.device.type != "cpu" or gram.dtype != torch.float64 or gram.requires_grad \
            or not np.isfinite(matrices := gram.numpy()).all():  # NumPy's check: one thread, no wake-ups
        values, vectors = torch.linalg.eigh(gram)
        return values[:, -1], vectors[..., -1]
    n = gram.shape[-1]
    with _lapack_threads().limit(limits=1 if n < THREADED_FROM else None, user_api="blas"):
        pairs = [_top_pair(g) for g in matrices]
    values = torch.from_numpy(np.array([value for value, _ in pairs]))
    vectors = torch.from_numpy(np.stack([vector for _, vector in pairs]))
    return values, vectors


def _top_pair(matrix):
    """One symmetric float64 NumPy matrix's largest eigenvalue and its eigenvector (see :func:`top_eigenpair`)."""
    import numpy as np
    import scipy.linalg
    import scipy.sparse.linalg

    n = matrix.shape[0]
    if n >= LANCZOS_FROM:
        start = np.random.default_rng(0).uniform(-1.0, 1.0, n)
        try:
            value, vector = scipy.sparse.linalg.eigsh(matrix, k=1, which="LA", tol=0, v0=start)
            return value[0], vector[:, 0]
        except scipy.sparse.linalg.ArpackNoConvergence:
            pass
    value, vector = scipy.linalg.eigh(matrix, subset_by_index=[n - 1, n - 1], driver="evr", check_finite=False)
    return value[0], vector[:, 0]


#: How much of the activations' energy the channel sum must carry along the projection to decide its sign.
DECISIVE = 1e-3


def sign(proj, centred, energy=None):
    """(N,) +1 or -1 for each (hw,) projection of the centred (N, hw, K) activations: the sign that makes it
    correlate positively with the channel sum t where t decides it, |p . t| >= DECISIVE |p| |M| sqrt(K)
    (a share of the activations' own energy, so that float rounding in t, about K * 6e-8 of it, cannot
    decide), else the sign that makes its value of largest magnitude positive (scikit-learn's ``svd_flip``
    rule), which rounding cannot flip unless two extremes of opposite signs tie.  ``energy``: |M|^2 (N,)
    where the caller has it (a Gram matrix's trace)."""
    import torch

    p = proj - proj.mean(dim=1, keepdim=True)
    total = centred.sum(dim=2)  # the channel sum, centred like every channel
    k = centred.shape[2]
    if energy is None:
        energy = centred.square().sum(dim=(1, 2))
    scale = p.norm(dim=1) * energy.clamp(min=0).sqrt() * k ** 0.5
    along = (p * total).sum(dim=1)
    extreme = proj.gather(1, proj.abs().argmax(dim=1, keepdim=True))[:, 0]
    decided = torch.where(along.abs() >= DECISIVE * scale, along, extreme)
    return torch.where(decided < 0, -1.0, 1.0).to(proj.dtype)


@register_method("eigencam", title="Eigen-CAM", needs="activations", class_specific=False,
                 reference="Muhammad & Yeasin, IJCNN 2020, arXiv:2008.00299",
                 summary="projection of the centred (hw x K) activations on their first right singular vector")
def eigencam(inp):
    return projection(inp.acts, inp.shared)


@functools.cache
def _lapack_threads():
    """threadpoolctl's controller of the BLAS libraries loaded once scipy.linalg is (made once: it scans them)."""
    import scipy.linalg  # noqa: F401  (its OpenBLAS loaded first)
    import scipy.sparse.linalg  # noqa: F401
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()
