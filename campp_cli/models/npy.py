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

from ..errors import WeightsError, clip

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

#: Most elements of an object array in the pickle (the file's one dict, a layer's [W, b] pair).
MAX_OBJECTS = 4096

_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]


class _Checked(np.ndarray):
    """An array being unpickled: its state is checked before NumPy allocates anything for it.

    A pickle states an array's shape and dtype apart from its data: a 1 KB file can claim an array of
    gigabytes.  The data must be all there (bytes: exactly shape x itemsize of them; objects: a list of
    exactly that many, at most :data:`MAX_OBJECTS`), so an array never takes more memory than the file.
    """

    def __setstate__(self, state):
        try:
            shape, dtype, data = state[-4], state[-3], state[-1]
            count = 1
            for n in shape:
                if not isinstance(n, int) or n < 0:
                    raise TypeError
                count *= n
        except (TypeError, IndexError, KeyError):
            raise pickle.UnpicklingError("the pickle holds an array with a malformed state") from None
        if not isinstance(dtype, np.dtype):
            raise pickle.UnpicklingError("the pickle holds an array without a dtype")
        if dtype.hasobject:
            if not isinstance(data, list) or len(data) != count or count > MAX_OBJECTS:
                given = len(data) if isinstance(data, list) else "no"
                raise pickle.UnpicklingError(f"the pickle claims an object array of shape {_shape(shape)} and "
                                             f"holds {given} items for it (at most {MAX_OBJECTS} are accepted)")
        elif not isinstance(data, (bytes, str)) or len(data) != count * dtype.itemsize:
            given = len(data) if isinstance(data, (bytes, str)) else "no"
            raise pickle.UnpicklingError(f"the pickle claims an array of shape {_shape(shape)} {dtype} "
                                         f"({count * dtype.itemsize} bytes) and holds {given} bytes for it")
        super().__setstate__(state)


def _shape(shape) -> str:
    return clip(tuple(shape), 80)


class _NdarrayToken:
    """What the pickle gets for numpy.ndarray: a name for :func:`_reconstruct`, never called itself."""

    def __new__(cls, *args, **kwargs):
        raise pickle.UnpicklingError("the pickle builds an array other than numpy pickles build them")


def _reconstruct(subtype, shape, dtype):
    """numpy's own ``_reconstruct`` (an empty array, filled by its state), for a checked array only."""
    if subtype is not _NdarrayToken or not isinstance(shape, tuple) or len(shape) > 1 or any(n != 0 for n in shape):
        raise pickle.UnpicklingError("the pickle builds an array other than numpy pickles build them")
    return _RECONSTRUCT(_Checked, shape, dtype)


# (module, name) pairs an array pickle needs; numpy 1.x and Python 2 pickles say
# numpy.core, numpy 2 says numpy._core.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): _NdarrayToken,
    ("numpy", "dtype"): np.dtype,
}


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"the pickle asks for code, not just arrays (forbidden global "
                                         f"{clip(module, 80)}.{clip(name, 80)})") from None


def _plain(obj):
    """``obj`` with every checked array a plain ndarray again (object arrays' items too)."""
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            out = np.empty(obj.shape, dtype=object)
            for index, item in np.ndenumerate(obj):
                out[index] = _plain(item)
            return out
        return obj.view(np.ndarray)
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_plain(v) for v in obj)
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


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
            obj = _plain(_ArraysOnly(fh, encoding="latin1").load())
    except WeightsError:
        raise
    except pickle.UnpicklingError as exc:
        raise WeightsError(f"{path}: refused: {clip(exc, 400)}") from None
    except Exception as exc:
        raise WeightsError(f"{path}: not a readable .npy weight file ({type(exc).__name__}: {clip(exc)})") from None
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
    """``(state_dict, metadata)`` as :func:`campp_cli.models.weights.read_checkpoint` returns them."""
    try:
        state = npy_to_state_dict(read_npy_dict(path), path)
    except WeightsError:
        raise
    except (ValueError, IndexError, TypeError, MemoryError) as exc:  # arrays of shapes no VGG16 has
        raise WeightsError(f"{path}: the arrays do not make a VGG16 ({type(exc).__name__}: {exc})") from None
    return state, {"preprocessing": dict(CAFFE_PREPROCESSING), "source": str(path)}
