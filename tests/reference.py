"""Independent reference computations, written from the definitions in the issues.

Nothing here imports campp: the maps are NumPy transcriptions of the formulas,
and activations/gradients come from splitting VGG16 by hand (no hooks).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


def gradcam_weights(A: np.ndarray, g: np.ndarray) -> np.ndarray:
    """A, g: (K, H, W). weight_k = mean_ij g_kij."""
    return g.reshape(g.shape[0], -1).mean(axis=1)


def eq19_parts(A_k: np.ndarray, g_k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Numerator and denominator of eq. 19 for one channel, exp(S) cancelled."""
    s = A_k.sum()
    return g_k ** 2, 2 * g_k ** 2 + s * g_k ** 3


def gradcampp_official_weights(A: np.ndarray, g: np.ndarray) -> np.ndarray:
    """The authors' misc/utils.py grad_CAM_plus, exp(S) cancelled."""
    weights = np.zeros(A.shape[0])
    for k in range(A.shape[0]):
        num, den = eq19_parts(A[k], g[k])
        alpha = num / np.where(den != 0.0, den, 1.0)
        norm = np.sum(np.where(g[k] > 0, alpha, 0.0))
        if norm != 0.0:
            alpha = alpha / norm
        weights[k] = np.sum(np.maximum(g[k], 0.0) * alpha)
    return weights


def gradcampp_paper_weights(A: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Eq. 19 as printed: no renormalisation; alpha = 0 where g = 0."""
    weights = np.zeros(A.shape[0])
    for k in range(A.shape[0]):
        num, den = eq19_parts(A[k], g[k])
        alpha = np.zeros_like(num)
        ok = (g[k] != 0) & (den != 0)
        alpha[ok] = num[ok] / den[ok]
        weights[k] = np.sum(np.maximum(g[k], 0.0) * alpha)
    return weights


def combine(weights: np.ndarray, A: np.ndarray) -> np.ndarray:
    cam = np.maximum(np.tensordot(weights, A, axes=1), 0.0)
    top = cam.max()
    return cam / top if top > 0 else cam


REFERENCE_WEIGHTS = {
    "gradcam": gradcam_weights,
    "official": gradcampp_official_weights,
    "paper": gradcampp_paper_weights,
}


def reference_map(A: np.ndarray, g: np.ndarray, method: str) -> np.ndarray:
    A = A.astype(np.float64)
    g = g.astype(np.float64)
    return combine(REFERENCE_WEIGHTS[method](A, g), A)


def vgg_activations_and_grads(model, x: torch.Tensor, cls: int | None = None, cut: int = 30):
    """Split torchvision's VGG at ``features[cut]``: A = features[:cut](x), g = dS/dA."""
    with torch.no_grad():
        A = model.features[:cut](x)
    A = A.clone().requires_grad_(True)
    h = model.features[cut:](A)
    h = model.avgpool(h)
    logits = model.classifier(torch.flatten(h, 1))
    if cls is None:
        cls = int(logits[0].argmax())
    (g,) = torch.autograd.grad(logits[0, cls], A)
    return A.detach()[0].numpy(), g[0].numpy(), logits.detach()[0].numpy(), cls


def paper_square(rgb: np.ndarray, size: int = 224, interpolation: str = "bilinear") -> np.ndarray:
    """The paper's centre square (offsets rounded down, as its load_image), resized to size x size by
    torchvision's own resize of a PIL image (antialiased, as ``weights.transforms()``): uint8 (size, size, 3)."""
    from PIL import Image
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    h, w = rgb.shape[:2]
    s = min(h, w)
    y, x = (h - s) // 2, (w - s) // 2
    crop = Image.fromarray(np.ascontiguousarray(rgb[y:y + s, x:x + s]))
    mode = InterpolationMode(interpolation)
    return np.asarray(F.resize(crop, [size, size], interpolation=mode, antialias=True))


def paper_preprocess(rgb: np.ndarray, size: int = 224) -> torch.Tensor:
    """Centre square crop, resize to size x size, ImageNet mean/std: (1, 3, size, size)."""
    small = paper_square(rgb, size).astype(np.float64) / 255.0
    norm = (small - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(norm.transpose(2, 0, 1)[None].astype(np.float32))


# ---------------------------------------------------------------- the other methods, from the definitions
# Each returns the combination before relu and max-normalisation; `normalised` applies those.


def normalised(cam: np.ndarray) -> np.ndarray:
    cam = np.maximum(cam, 0.0)
    top = cam.max()
    return cam / top if top > 0 else cam


def xgradcam_combination(A: np.ndarray, g: np.ndarray) -> np.ndarray:
    """w_k = sum_ij A g / sum_ij A (0 when the activations sum to exactly 0)."""
    out = np.zeros(A.shape[1:])
    for k in range(A.shape[0]):
        total = A[k].sum()
        w = 0.0 if total == 0 else float((A[k] * g[k]).sum() / total)
        out += w * A[k]
    return out


def hirescam_combination(A, g):
    return sum(g[k] * A[k] for k in range(A.shape[0]))


def elementwise_combination(A, g):
    return sum(np.maximum(g[k] * A[k], 0.0) for k in range(A.shape[0]))


def layercam_combination(A, g):
    return sum(np.maximum(g[k], 0.0) * A[k] for k in range(A.shape[0]))


def eigencam_combination(A, g=None):
    """First principal component of the (HW x K) activations, signed to correlate with sum_k A_k where that
    sum carries at least 1e-3 of the activations' energy along it, else so that its largest-magnitude value
    is positive."""
    K, H, W = A.shape
    X = A.reshape(K, H * W).T.astype(np.float64)
    X = X - X.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(X, full_matrices=False)
    p = X @ vt[0]
    total = X.sum(axis=1)  # sum_k A_k, centred
    along = np.dot(p - p.mean(), total)
    if abs(along) >= 1e-3 * np.linalg.norm(p - p.mean()) * np.linalg.norm(X) * np.sqrt(K):  # the sum decides
        flip = along < 0
    else:  # it cannot: the value of largest magnitude is made positive
        flip = p[np.argmax(np.abs(p))] < 0
    return (-p if flip else p).reshape(H, W)


GRADIENT_COMBINATIONS = {
    "gradcam": lambda A, g: np.tensordot(gradcam_weights(A, g), A, axes=1),
    "xgradcam": xgradcam_combination,
    "hirescam": hirescam_combination,
    "gradcam_elementwise": elementwise_combination,
    "layercam": layercam_combination,
    "eigencam": eigencam_combination,
}


def reference_method_map(A: np.ndarray, g: np.ndarray, method: str) -> np.ndarray:
    """Any method but Score-CAM, from (K, H, W) A and g; Grad-CAM++ as 'official' or 'paper'."""
    if method in ("official", "paper"):
        return reference_map(A, g, method)
    return normalised(GRADIENT_COMBINATIONS[method](A.astype(np.float64), g.astype(np.float64)))


def upsample_bilinear(channel: np.ndarray, size: int) -> np.ndarray:
    """OpenCV's bilinear resize (half-pixel centres), independent of torch's interpolate."""
    return cv2.resize(channel.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR).astype(np.float64)


def scorecam_map(A: np.ndarray, rgb01: np.ndarray, class_probability) -> np.ndarray:
    """Score-CAM as the issue defines it, one channel at a time.

    ``rgb01``: (3, S, S) image in [0, 1]; ``class_probability(img)``: softmax
    probability of the explained class for one (3, S, S) image before normalisation.
    """
    size = rgb01.shape[-1]
    weights = np.zeros(A.shape[0])
    for k in range(A.shape[0]):
        up = upsample_bilinear(A[k], size)
        lo, hi = up.min(), up.max()
        if hi - lo <= 1e-12 * max(1.0, abs(hi)):
            continue  # a constant channel: weight 0
        weights[k] = class_probability(rgb01 * ((up - lo) / (hi - lo))[None])
    return normalised(np.tensordot(weights, A.astype(np.float64), axes=1))
