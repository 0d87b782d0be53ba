"""The formats of the files campp writes, registered in one place (:data:`FILE_FORMATS`): each with its
suffixes, its encoder and the check that a file of it is whole (``--skip-existing`` redoes one that is not).

Encoders are named by ``"module:function"``: importing this module imports neither OpenCV nor NumPy.
"""

from __future__ import annotations

import importlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

from ..registry import Registry
from ..settings import FORMATS


@dataclass(frozen=True)
class FileFormat:
    name: str
    suffixes: tuple[str, ...]  # the first is the one campp adds
    encoder: str  # "module:function": an array -> the file's bytes
    whole: Callable[[BinaryIO, int], bool]  # an open file of that size is complete
    figure: bool = True  # a format of the figures (--format)

    def encode(self, array) -> bytes:
        module, function = self.encoder.split(":")
        return getattr(importlib.import_module(module), function)(array)


#: Every format campp writes.
FILE_FORMATS: Registry[FileFormat] = Registry("file format", param="format")


def _jpeg_whole(fh: BinaryIO, size: int) -> bool:
    head = fh.read(2)
    fh.seek(-2, os.SEEK_END)
    return head == b"\xff\xd8" and fh.read(2) == b"\xff\xd9"


def _png_whole(fh: BinaryIO, size: int) -> bool:
    if size < 12:
        return False
    fh.seek(-12, os.SEEK_END)
    return fh.read(12)[4:8] == b"IEND"


def _npy_whole(fh: BinaryIO, size: int) -> bool:
    import numpy as np

    version = np.lib.format.read_magic(fh)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read_header(fh)
    return fh.tell() + int(np.prod(shape)) * dtype.itemsize == size


def encode_npy(array) -> bytes:
    """A map as a float32 ``.npy``."""
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array, dtype=np.float32))
    return buf.getvalue()


FILE_FORMATS.register("jpeg", FileFormat("jpeg", FORMATS["jpeg"], "campp_cli.draw.encode:encode_jpeg", _jpeg_whole))
FILE_FORMATS.register("png", FileFormat("png", FORMATS["png"], "campp_cli.draw.encode:encode_png", _png_whole))
FILE_FORMATS.register("npy", FileFormat("npy", (".npy",), "campp_cli.io.formats:encode_npy", _npy_whole, figure=False))


def of_suffix(suffix: str) -> FileFormat | None:
    """The format a file suffix names, or None."""
    return next((f for f in FILE_FORMATS if suffix.lower() in f.suffixes), None)


def is_complete(path: str | os.PathLike) -> bool:
    """Whether an output file is whole, as its format says (a JPEG from its start marker to its end marker, a
    PNG to its IEND chunk, a .npy of the size its header gives); any other file non-empty.  Links do not
    count."""
    path = Path(path)
    try:
        if path.is_symlink() or not path.is_file():
            return False
        size = path.stat().st_size
        if size == 0:
            return False
        fmt = of_suffix(path.suffix)
        if fmt is None:
            return True
        with open(path, "rb") as fh:
            return fmt.whole(fh, size)
    except (OSError, ValueError):
        return False
