"""The Grad-CAM++ paper's original weights: ``vgg16.npy`` (Caffe VGG16 ported to TensorFlow).

The file is ``np.save`` of a pickled dict ``{'conv1_1': [W, b], ..., 'fc8': [W, b]}``
written by Python 2.  Pickle can run code, so it is read with an unpickler
that admits only NumPy arrays, dtypes and plain containers; anything else is
refused before it is built.  ``campp convert`` turns it into a plain
state_dict once, so later runs never touch pickle.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from .errors import WeightsError

#: Caffe VGG16's own preprocessing: RGB [0,1] * 255, to BGR, minus the BGR mean, no std.
CAFFE_PREPROCESSING = {"mean": [103.939, 116.779, 123.68], "std": [1.0, 1.0, 1.0], "scale": 255.0, "bgr": True}

#: npy layer name -> torchvision vgg16 module name.
CONV_LAYERS = {
    "conv1_1": "features.0", "conv1_2": "features.2",
    "conv2_1": "features.5", "conv2_2": "features.7",
    "conv3_1": "features.10", "conv3_2": "features.12", "conv3_3": "features.14",
    "conv4_1": "features.17", "conv4_2": "features.19", "conv4_3": "features.21",
    "conv5_1": "features.24", "conv5_2": "features.26", "conv5_3": "features.28",
}
FC_LAYERS = {"fc6": "classifier.0", "fc7": "classifier.3", "fc8": "classifier.6"}

# (module, name) pairs an array pickle needs; numpy 1.x and Python 2 pickles say
# numpy.core, numpy 2 says numpy._core.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(1))[0],
    ("numpy._core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(1))[0],
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"forbidden global {module}.{name}") from None


def read_npy_dict(path: str | Path) -> dict:
    """Read a pickled-dict ``.npy`` without running any code from it."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            major, minor = np.lib.format.read_magic(fh)
            if (major, minor) == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
            if dtype != np.dtype(object) or shape != ():
                raise WeightsError(f"{path}: not a pickled weight dict (an array {dtype} {shape})")
            obj = _ArraysOnly(fh, encoding="latin1").load()
    except WeightsError:
        raise
    except pickle.UnpicklingError as exc:
        raise WeightsError(f"{path}: refused: the pickle asks for code, not just arrays ({exc})") from None
    except Exception as exc:
        raise WeightsError(f"{path}: not a readable .npy weight file ({type(exc).__name__}: {exc})") from None
    if isinstance(obj, np.ndarray) and obj.shape == ():
        obj = obj.item()
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: expected a dict of layers, found {type(obj).__name__}")
    return obj


def _pair(layers: dict, name: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        w, b = layers[name]
    except (KeyError, TypeError, ValueError):
        raise WeightsError(f"{path}: layer {name} is missing or not a [W, b] pair") from None
    if not all(isinstance(a, np.ndarray) and a.dtype.kind == "f" for a in (w, b)):
        raise WeightsError(f"{path}: layer {name} does not hold float arrays")
    if w.size == 0 or b.size == 0:
        raise WeightsError(f"{path}: layer {name} is empty (shape {w.shape})")
    return w, b


def npy_to_state_dict(layers: dict, path: str | Path = "vgg16.npy") -> dict:
    """Convert the TensorFlow layout to torchvision's vgg16 state_dict (float32 tensors)."""
    import torch

    path = Path(path)
    state = {}
    for name, module in CONV_LAYERS.items():
        w, b = _pair(layers, name, path)
        if w.ndim != 4:
            raise WeightsError(f"{path}: {name} weight should be HWIO (4-d), is {w.shape}")
        state[f"{module}.weight"] = np.transpose(w, (3, 2, 0, 1))  # HWIO -> OIHW
        state[f"{module}.bias"] = b
    for name, module in FC_LAYERS.items():
        w, b = _pair(layers, name, path)
        if w.ndim != 2:
            raise WeightsError(f"{path}: {name} weight should be (in, out), is {w.shape}")
        if name == "fc6":
            if w.shape[0] != 7 * 7 * 512:
                raise WeightsError(f"{path}: fc6 expects 25088 = 7x7x512 inputs, has {w.shape[0]}")
            # Rows are TF's (h, w, c) flatten of pool5; torch flattens (c, h, w).
            w = w.reshape(7, 7, 512, -1).transpose(3, 2, 0, 1).reshape(w.shape[1], -1)
        else:
            w = w.T
        state[f"{module}.weight"] = w
        state[f"{module}.bias"] = b
    return {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in state.items()}


def load_npy_weights(path: str | Path) -> tuple[dict, dict]:
    """``(state_dict, metadata)`` as :func:`campp_cli.models.read_checkpoint` returns them."""
    try:
        state = npy_to_state_dict(read_npy_dict(path), path)
    except WeightsError:
        raise
    except (ValueError, IndexError, TypeError, MemoryError) as exc:  # arrays of shapes no VGG16 has
        raise WeightsError(f"{path}: the arrays do not make a VGG16 ({type(exc).__name__}: {exc})") from None
    return state, {"preprocessing": dict(CAFFE_PREPROCESSING), "source": str(path)}
