"""More independent reference computations of class activation maps, written from the papers' definitions.

Nothing here imports campp. NumPy float64 throughout; torch is used only where a function has to
differentiate a given torch function (ShapleyCAM, Finer-CAM).

Conventions (the same as tests/reference.py):
  * ``A`` and ``g`` are (K, h, w) arrays for ONE image: the activations of the target layer and the
    gradient dS/dA of the class score.
  * every ``*_combination`` returns the (h, w) combination BEFORE the common last step; campp then
    applies relu and divides by the max, which ``reference.normalised`` does (the ``*_map`` wrappers
    at the end of this file apply it).
  * "masks" for the perturbation methods follow reference.scorecam_map: U_k = upsample_bilinear(A_k, S)
    (OpenCV, half-pixel centres), M_k = (U_k - min U_k) / (max U_k - min U_k); a constant channel gets
    weight 0 and the model is not called for it.
"""

from __future__ import annotations

import numpy as np
from reference import eigencam_combination, normalised, upsample_bilinear

__all__ = [
    "principal_sign",
    "eigengradcam_combination",
    "kpcacam_combination",
    "kpcacam_sklearn",
    "cam_combination",
    "ablationcam_weights",
    "ablationcam_combination",
    "score_masks",
    "sscam_weights",
    "sscam_combination",
    "iscam_coefficients",
    "iscam_weights",
    "iscam_combination",
    "shapleycam_weights",
    "shapleycam_combination",
    "finercam_references",
    "finercam_target",
    "finercam_weights",
    "finercam_combination",
]


# ----------------------------------------------------------------------------------------- helpers


def _rows(A: np.ndarray) -> np.ndarray:
    """(K, h, w) -> the (hw, K) matrix of positions x channels, centred per channel over positions."""
    K = A.shape[0]
    X = np.asarray(A, dtype=np.float64).reshape(K, -1).T
    return X - X.mean(axis=0, keepdims=True)


def principal_sign(p: np.ndarray, X: np.ndarray) -> np.ndarray:
    """The sign rule of reference.eigencam_combination, for a projection ``p`` (hw,) of the centred rows ``X`` (hw, K).

    Let pc = p - mean(p) and t = X.sum(axis=1) (the centred channel sum). When
    |<pc, t>| >= 1e-3 * ||pc|| * ||X||_F * sqrt(K) the sum decides: p is flipped if <pc, t> < 0. Otherwise
    p is flipped if its value of largest magnitude is negative. Returns the signed p (a copy).
    """
    p = np.asarray(p, dtype=np.float64)
    K = X.shape[1]
    pc = p - p.mean()
    total = X.sum(axis=1)
    along = float(np.dot(pc, total))
    if abs(along) >= 1e-3 * np.linalg.norm(pc) * np.linalg.norm(X) * np.sqrt(K):
        flip = along < 0
    else:
        flip = p[np.argmax(np.abs(p))] < 0
    return -p if flip else p.copy()


# --------------------------------------------------------------------------------------- EigenGrad-CAM


def eigengradcam_combination(A: np.ndarray, g: np.ndarray) -> np.ndarray:
    """EigenGrad-CAM: the first principal component of the elementwise product g * A.

    X = rows of (g * A), i.e. the (hw, K) matrix X[ij, k] = g_kij A_kij, centred per channel over the
    positions; X = U S V^T (np.linalg.svd); the map is p = X v_1 (v_1 the first right singular vector),
    reshaped (h, w), with the sign rule of ``principal_sign`` (correlate positively with the centred channel
    sum of g * A where that sum is decisive, else make the largest-magnitude value positive).

    This is literally reference.eigencam_combination applied to g * A, and is computed that way.

    Source: pytorch-grad-cam's EigenGradCAM (``get_2d_projection(grads * activations)``), "Like Eigen CAM
    but multiply the activations x gradients"; Eigen-CAM itself is Muhammad & Yeasin, IJCNN 2020,
    arXiv:2008.00299. pytorch-grad-cam takes VT[0] with whatever sign LAPACK returns (no sign rule) and
    then applies relu, so its map can be the negative one; it also replaces NaNs by 0.
    """
    A = np.asarray(A, dtype=np.float64)
    g = np.asarray(g, dtype=np.float64)
    return eigencam_combination(g * A)


# ------------------------------------------------------------------------------------------- KPCA-CAM


def kpcacam_combination(A: np.ndarray, gamma: float | None = None, coef0: float = 1.0) -> np.ndarray:
    """KPCA-CAM: the first kernel principal component of the activations, with the sigmoid kernel.

    Rows x_i (i = 1..n, n = hw) of the (hw, K) activations, centred per channel over positions.
    Kernel:   K_ij = tanh(gamma * <x_i, x_j> + coef0),   gamma = 1/K by default (sklearn's gamma=None).
    Centring: Kc = K - 1_n K - K 1_n + 1_n K 1_n,   1_n = ones((n, n)) / n.
    Projection of the training points on the first component: p = sqrt(lambda_1) * v_1 with (lambda_1, v_1)
    the largest eigenpair of Kc (lambda_1 clipped at 0 as sklearn does); reshaped (h, w).
    Sign: ``principal_sign(p, X)`` with X the centred activations (positive correlation with the centred
    channel sum of A where decisive, else largest magnitude positive).

    Source: Karmani, Sivakaran, Prasad, Ali, Yang, Tang, "KPCA-CAM: Visual Explainability of Deep Computer
    Vision Models using Kernel PCA", arXiv:2410.00267 (2024); pytorch-grad-cam's KPCA_CAM:
    ``KernelPCA(n_components=1, kernel='sigmoid', gamma=None).fit_transform(centred rows)``. Kernel PCA
    itself: Schoelkopf, Smola & Mueller, Neural Computation 1998. sklearn fixes the sign with svd_flip (the
    largest-|.| entry of the eigenvector positive), not with the channel-sum rule used here.
    """
    A = np.asarray(A, dtype=np.float64)
    K_, h, w = A.shape
    X = _rows(A)
    n = X.shape[0]
    gam = 1.0 / K_ if gamma is None else float(gamma)
    Kmat = np.tanh(gam * (X @ X.T) + coef0)
    one = np.full((n, n), 1.0 / n)
    Kc = Kmat - one @ Kmat - Kmat @ one + one @ Kmat @ one
    Kc = 0.5 * (Kc + Kc.T)
    lam, V = np.linalg.eigh(Kc)  # ascending
    lam1 = max(float(lam[-1]), 0.0)
    p = V[:, -1] * np.sqrt(lam1)
    return principal_sign(p, X).reshape(h, w)


def kpcacam_sklearn(A: np.ndarray, gamma: float | None = None, coef0: float = 1.0) -> np.ndarray:
    """sklearn's KernelPCA(n_components=1, kernel='sigmoid', gamma, coef0).fit_transform(centred rows), as (h, w).

    What pytorch-grad-cam's get_2d_projection_kernel computes (there in float32 and without sign rule).
    Only for checking ``kpcacam_combination`` against sklearn up to sign.
    """
    from sklearn.decomposition import KernelPCA

    A = np.asarray(A, dtype=np.float64)
    _, h, w = A.shape
    kpca = KernelPCA(n_components=1, kernel="sigmoid", gamma=gamma, coef0=coef0)
    return kpca.fit_transform(_rows(A))[:, 0].reshape(h, w)


# ------------------------------------------------------------------------------------------------ CAM


def cam_combination(A: np.ndarray, W: np.ndarray, c: int) -> np.ndarray:
    """CAM: M_c(x, y) = sum_k W[c, k] A_k(x, y).

    For a network ending in global average pooling + a linear layer with weight W (C, K) (and bias b),
    the class score is S_c = sum_k W[c, k] mean_xy A_k(x, y) + b_c, so mean(M_c) = S_c - b_c.

    Source: Zhou, Khosla, Lapedriza, Oliva, Torralba, "Learning Deep Features for Discriminative
    Localization", CVPR 2016, arXiv:1512.04150 (eq. M_c(x, y) = sum_k w_k^c f_k(x, y)).
    """
    A = np.asarray(A, dtype=np.float64)
    W = np.asarray(W, dtype=np.float64)
    return np.tensordot(W[c], A, axes=1)


# ---------------------------------------------------------------------------------------- Ablation-CAM


def _class_score(out, c: int) -> float:
    """A score callable may return the class-c logit (a scalar) or the logit vector (then indexed by c)."""
    arr = np.asarray(out, dtype=np.float64)
    if arr.ndim == 0 or arr.size == 1:
        return float(arr.reshape(()))
    return float(arr.reshape(-1)[c])


def ablationcam_weights(A: np.ndarray, score, c: int) -> np.ndarray:
    """Ablation-CAM weights w_k = (y - y_k) / y.

    y = score(A), y_k = score(A with channel k set to 0). ``score`` takes a (K, h, w) float64 array and
    returns the class-c logit (or the logit vector, which is then indexed by c). A channel that is already
    all zero gets w_k = 0 and score is not called for it (ablating it changes nothing). If y == 0 the
    division is by 1 instead.
    """
    A = np.asarray(A, dtype=np.float64)
    y = _class_score(score(A.copy()), c)
    # campp's decision (not the paper's y): divide by |y|, so that a negative score keeps drops positive
    denom = abs(y) if y != 0.0 else 1.0
    weights = np.zeros(A.shape[0])
    for k in range(A.shape[0]):
        if not np.any(A[k]):
            continue
        ablated = A.copy()
        ablated[k] = 0.0
        weights[k] = (y - _class_score(score(ablated), c)) / denom
    return weights


def ablationcam_combination(A: np.ndarray, score, c: int) -> np.ndarray:
    """Ablation-CAM: sum_k w_k A_k with w_k = (y^c - y^c_k) / y^c (see ``ablationcam_weights``).

    Source: Desai & Ramaswamy, "Ablation-CAM: Visual Explanations for Deep Convolutional Network via
    Gradient-free Localization", WACV 2020 (no arXiv version). The paper first writes the slope
    (y^c - y^c_k) / ||A_k|| and uses the normalised drop (y^c - y^c_k) / y^c as the weight; y^c_k is the
    score with feature map k set to zero. pytorch-grad-cam's AblationCAM uses (y - y_k) / y too, but
    ablates to 0 only when the layer's minimum activation is exactly 0, otherwise to min - 1e7; it calls the
    model for every channel and does not guard y == 0.
    """
    A = np.asarray(A, dtype=np.float64)
    return np.tensordot(ablationcam_weights(A, score, c), A, axes=1)


# ------------------------------------------------------------------------- Score-CAM family (SS, IS)


def score_masks(A: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Score-CAM masks: (K, S, S) M_k = (U_k - min U_k) / (max U_k - min U_k), U_k = upsample_bilinear(A_k, S).

    Returns (masks, valid): channels with max A_k == min A_k (or a constant upsampled map) are not valid;
    their mask is left at 0 and they must get weight 0 with no model call.
    """
    A = np.asarray(A, dtype=np.float64)
    K = A.shape[0]
    masks = np.zeros((K, size, size))
    valid = np.zeros(K, dtype=bool)
    for k in range(K):
        if A[k].max() == A[k].min():
            continue
        up = upsample_bilinear(A[k], size)
        lo, hi = up.min(), up.max()
        if hi <= lo:
            continue
        masks[k] = (up - lo) / (hi - lo)
        valid[k] = True
    return masks, valid


def sscam_weights(A: np.ndarray, rgb01: np.ndarray, prob, noise: np.ndarray) -> np.ndarray:
    """SS-CAM (mask-noise variant) weights: w_k = (1/n) sum_i prob(rgb01 * (M_k + noise[i])).

    ``rgb01``: (3, S, S) image in [0, 1]; ``prob``: (B, 3, S, S) float64 array -> (B,) class probabilities;
    ``noise``: (n, S, S), the same samples for every channel (common random numbers). Noise is added to the
    normalised mask, the sum is not clipped nor renormalised. Constant channels: weight 0, no call.
    """
    rgb01 = np.asarray(rgb01, dtype=np.float64)
    noise = np.asarray(noise, dtype=np.float64)
    size = rgb01.shape[-1]
    masks, valid = score_masks(A, size)
    weights = np.zeros(masks.shape[0])
    for k in np.flatnonzero(valid):
        batch = rgb01[None] * (masks[k][None] + noise)[:, None]  # (n, 3, S, S)
        weights[k] = float(np.mean(np.asarray(prob(batch), dtype=np.float64)))
    return weights


def sscam_combination(A: np.ndarray, rgb01: np.ndarray, prob, noise: np.ndarray) -> np.ndarray:
    """SS-CAM, noise on the mask: sum_k w_k A_k, w_k = mean_i prob(rgb01 * (M_k + delta_i)), delta_i = noise[i].

    With zero noise this is plain Score-CAM as reference.scorecam_map (w_k = prob(rgb01 * M_k)).

    Source: Wang, Naidu, Michael, Kundu, "SS-CAM: Smoothed Score-CAM for Sharper Visual Feature
    Localization", arXiv:2006.14255 (2020). The paper smooths Score-CAM's channel scores by averaging them
    over N noisy samples; per summaries of its v3 (its full text was not readable here) it has two
    placements of the Gaussian noise, on the activation map / mask ("SS-CAM(1)") and on the masked input
    ("SS-CAM(2)"), reporting N = 10, sigma = 2. This function is the mask variant, with the noise samples
    supplied by the caller. Code from the authors' group (SS_CAM in ankitaghosh9/Variations-on-Score-CAM,
    SSCAM1/SSCAM2 copies elsewhere) uses N = 35, param_sigma_multiplier = 2, sigma = 2 / (max x - min x)
    and draws the noise with std sigma**2, added to the unnormalised upsampled map (SSCAM1) or to the masked
    input (SS_CAM, SSCAM2). torchcam's SSCAM adds N(0, 2^2) noise to the normalised mask (num_samples=35,
    std=2.0) but scores logits minus a baseline and takes a softmax of the averaged scores over channels.
    """
    A = np.asarray(A, dtype=np.float64)
    return np.tensordot(sscam_weights(A, rgb01, prob, noise), A, axes=1)


def iscam_coefficients(n: int) -> np.ndarray:
    """IS-CAM's cumulative mask coefficients: c_i = sum_{j=1..i} j/n = i(i+1)/(2n), i = 1..n."""
    i = np.arange(1, n + 1, dtype=np.float64)
    return np.cumsum(i / n)


def iscam_weights(A: np.ndarray, rgb01: np.ndarray, prob, n: int) -> np.ndarray:
    """IS-CAM weights: w_k = (1/n) sum_{i=1..n} prob(rgb01 * M_k^(i)), M_k^(i) = (sum_{j<=i} j/n) M_k.

    The masks are CUMULATIVE: starting from M = 0, step i adds (i/n) M_k (M <- M + (i/n) M_k), so the i-th
    mask is c_i M_k with c_i = i(i+1)/(2n) (c_n = (n+1)/2, i.e. the masks go beyond M_k). Constant channels:
    weight 0, no call.
    """
    rgb01 = np.asarray(rgb01, dtype=np.float64)
    size = rgb01.shape[-1]
    masks, valid = score_masks(A, size)
    coef = iscam_coefficients(int(n))
    weights = np.zeros(masks.shape[0])
    for k in np.flatnonzero(valid):
        batch = coef[:, None, None, None] * (rgb01[None] * masks[k][None, None])  # (n, 3, S, S)
        weights[k] = float(np.mean(np.asarray(prob(batch), dtype=np.float64)))
    return weights


def iscam_combination(A: np.ndarray, rgb01: np.ndarray, prob, n: int) -> np.ndarray:
    """IS-CAM: sum_k w_k A_k with w_k = (1/n) sum_{i=1..n} prob(rgb01 * (sum_{j=1..i} j/n) M_k).

    Cumulative masks (see ``iscam_weights``); n = 1 is plain Score-CAM.

    Source: Naidu, Ghosh, Maurya, Nayak K, Kundu, "IS-CAM: Integrated Score-CAM for axiomatic-based
    explanations", arXiv:2010.03023 (2020): Score-CAM with an integration over scaled masks, N = 10. The
    cumulative form is the authors' code (r0cketr1kky/ISS-CAM_resources algo.py, last revision, and the IS_CAM
    class of ankitaghosh9/Variations-on-Score-CAM: ``new_map += x * c * i`` for i = 1..10, c = 0.1, scores
    averaged) and torchcam's ISCAM (``coeff += (sidx + 1) / num_samples``, M_i = sum_{p<=i} p/N M_k). An
    earlier revision of the authors' algo.py used non-cumulative masks (i/N) M_k. torchcam scores logits minus
    a baseline and applies a softmax over channels, the authors' code uses softmax probabilities as here.
    """
    A = np.asarray(A, dtype=np.float64)
    return np.tensordot(iscam_weights(A, rgb01, prob, n), A, axes=1)


# ---------------------------------------------------------------------------------------- ShapleyCAM


def _scalar(t):
    if t.numel() != 1:
        raise ValueError(f"head must return the scalar class score, got shape {tuple(t.shape)}")
    return t.reshape(())


def shapleycam_weights(A: np.ndarray, head) -> np.ndarray:
    """ShapleyCAM weights w_k = mean_ij (g - 0.5 * H A)_kij, g = dS/dA, H = d^2 S / dA^2 (by double backward)."""
    import torch

    At = torch.tensor(np.asarray(A, dtype=np.float64), dtype=torch.float64, requires_grad=True)
    S = _scalar(head(At[None]))
    (g,) = torch.autograd.grad(S, At, create_graph=True)
    if g.requires_grad:
        (hvp,) = torch.autograd.grad(g, At, grad_outputs=At.detach(), allow_unused=True)
        if hvp is None:
            hvp = torch.zeros_like(At)
    else:  # S is linear in A: the Hessian is zero
        hvp = torch.zeros_like(At)
    weight = (g - 0.5 * hvp).detach().numpy()
    return weight.reshape(weight.shape[0], -1).mean(axis=1)


def shapleycam_combination(A: np.ndarray, head) -> np.ndarray:
    """ShapleyCAM: sum_k w_k A_k with w_k = mean_ij (dS/dA - 1/2 H A)_kij.

    ``head`` maps a (1, K, h, w) float64 tensor to the scalar class score S (any torch function). The
    second-order Taylor expansion of the cooperative game gives the Shapley value of the activations as
    A * (g - 1/2 H A) (elementwise); the CAM variant averages (g - 1/2 H A) over positions as Grad-CAM
    averages g. For a linear head H = 0 and this is Grad-CAM.

    Source: Huaiguang Cai, "CAMs as Shapley Value-based Explainers", arXiv:2501.06261 (2025);
    pytorch-grad-cam's ShapleyCAM (``hvp = autograd.grad(grads, activations, grad_outputs=activations)``,
    ``weight = mean(grads - 0.5 * hvp)``). The paper pairs it with the ReST utility
    S = y_c - CE(y, c) = y_c + log softmax(y)_c; pytorch-grad-cam's default target is the plain logit
    (ClassifierOutputReST must be passed explicitly). Here S is whatever ``head`` returns.
    """
    A = np.asarray(A, dtype=np.float64)
    return np.tensordot(shapleycam_weights(A, head), A, axes=1)


# ----------------------------------------------------------------------------------------- Finer-CAM


def finercam_references(y: np.ndarray, c: int, comparisons=(1, 2, 3)) -> list[int]:
    """The comparison classes: positions ``comparisons`` of the classes sorted by |y_j - y_c| (stable argsort).

    Position 0 is c itself (unless another class ties with it exactly); positions >= C are dropped.
    """
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    order = np.argsort(np.abs(y - y[c]), kind="stable")
    return [int(order[i]) for i in comparisons if 0 <= i < order.size]


def finercam_target(y, c: int, refs, alpha: float = 1.0):
    """T = sum_j p_j (y_c - alpha y_j) / sum_j p_j over the comparison classes j, p = softmax(y).

    Works on a torch tensor (differentiable, p differentiated too) or a NumPy array. With no comparison
    class T falls back to y_c (as the Finer-CAM authors' README states).
    """
    try:
        import torch

        is_torch = isinstance(y, torch.Tensor)
    except ImportError:  # pragma: no cover
        is_torch = False
    if not refs:
        return y[c]
    if is_torch:
        p = torch.softmax(y, dim=-1)
    else:
        y = np.asarray(y, dtype=np.float64)
        e = np.exp(y - y.max())
        p = e / e.sum()
    num = sum(p[j] * (y[c] - alpha * y[j]) for j in refs)
    den = sum(p[j] for j in refs)
    return num / den


def finercam_weights(A: np.ndarray, head, c: int, alpha: float = 1.0, comparisons=(1, 2, 3)) -> np.ndarray:
    """Grad-CAM weights of the Finer-CAM target: w_k = mean_ij dT/dA_kij (see ``finercam_combination``)."""
    import torch

    At = torch.tensor(np.asarray(A, dtype=np.float64), dtype=torch.float64, requires_grad=True)
    y = head(At[None]).reshape(-1)
    refs = finercam_references(y.detach().numpy(), c, comparisons)
    T = finercam_target(y, c, refs, alpha)
    (G,) = torch.autograd.grad(T, At)
    G = G.numpy()
    return G.reshape(G.shape[0], -1).mean(axis=1)


def finercam_combination(A: np.ndarray, head, c: int, alpha: float = 1.0, comparisons=(1, 2, 3)) -> np.ndarray:
    """Finer-CAM on Grad-CAM: sum_k w_k A_k, w_k = mean_ij dT/dA_kij with
    T = sum_{j in R} p_j (y_c - alpha y_j) / sum_{j in R} p_j,   p = softmax(y).

    ``head`` maps a (1, K, h, w) float64 tensor to the (C,) logits y. R = the classes at positions
    ``comparisons`` (default 1, 2, 3: the 2nd to 4th most similar) of the classes sorted by |y_j - y_c|
    ascending (stable argsort). p is differentiated too. No R -> T = y_c. alpha = 0 gives Grad-CAM of y_c.

    Source: Zhang, Gu, Chowdhury, Mai, Carlyn, Berger-Wolf, Su, Chao, "Finer-CAM: Spotting the Difference
    Reveals Finer Details for Visual Explanation", CVPR 2025, arXiv:2501.11309: explain the logit difference
    y^c - gamma y^d against a visually similar class d instead of y^c (gamma = alpha here), aggregated over
    several similar classes. As implemented by the authors (Imageomics/Finer-CAM) and pytorch-grad-cam
    1.5.7 (FinerCAM + utils/model_targets.FinerWeightedTarget): the probability-weighted mean above, with
    denominator sum p_j + 1e-9 (omitted here), main category = sorted_indices[0] (= c barring ties),
    np.argsort's default (non-stable) sort.
    """
    A = np.asarray(A, dtype=np.float64)
    return np.tensordot(finercam_weights(A, head, c, alpha, comparisons), A, axes=1)


# ------------------------------------------------------------------------------------ final maps


def eigengradcam_map(A, g):
    return normalised(eigengradcam_combination(A, g))


def kpcacam_map(A, gamma=None, coef0=1.0):
    return normalised(kpcacam_combination(A, gamma, coef0))


def cam_map(A, W, c):
    return normalised(cam_combination(A, W, c))


def ablationcam_map(A, score, c):
    return normalised(ablationcam_combination(A, score, c))


def sscam_map(A, rgb01, prob, noise):
    return normalised(sscam_combination(A, rgb01, prob, noise))


def iscam_map(A, rgb01, prob, n):
    return normalised(iscam_combination(A, rgb01, prob, n))


def shapleycam_map(A, head):
    return normalised(shapleycam_combination(A, head))


def finercam_map(A, head, c, alpha=1.0, comparisons=(1, 2, 3)):
    return normalised(finercam_combination(A, head, c, alpha, comparisons))
