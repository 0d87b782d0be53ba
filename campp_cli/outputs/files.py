"""Writing one image's set of files: every figure and map, all or nothing, in the job's output folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import OutputError
from ..io.durable import write_all_atomic
from ..io.inputs import Job
from ..io.names import format_of
from . import kinds


def write_outputs(job: Job, figures: dict[str, np.ndarray], maps: dict[str, np.ndarray] | None = None) -> list[str]:
    """Write every figure (keyed by output key) and map (as its kind says), all or nothing; return the paths in
    order."""
    fmt = format_of(job.suffix) or "jpeg"
    files = {job.path(k): kinds.encode(k, v, fmt) for k, v in figures.items()}
    for method, cam in (maps or {}).items():
        map_key = kinds.key("map", method)
        files[job.path(map_key)] = kinds.encode(map_key, cam, fmt)
    write_all_atomic(files, source=str(job.source))
    return [str(p) for p in files]


def make_output_folder(job: Job) -> None:
    """Create the job's (mirrored) output folder under its root, never through a symbolic link."""
    root = job.root or job.out_dir
    try:
        rel = job.out_dir.relative_to(root)
    except ValueError:
        root, rel = job.out_dir, Path()
    try:
        root.mkdir(parents=True, exist_ok=True)  # the folder the user named (a link there is their choice)
    except OSError as exc:
        raise OutputError(f"{job.source}: cannot create the output folder {root} ({exc.strerror or exc})") from None
    folder = root
    for part in rel.parts:
        folder = folder / part
        if folder.is_symlink():
            raise OutputError(f"{job.source}: refused: the output folder {folder} is a symbolic link "
                              f"(campp never writes through links)")
        try:
            folder.mkdir(exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{job.source}: cannot create the output folder {folder} "
                              f"({exc.strerror or exc})") from None
        if not folder.is_dir():
            raise OutputError(f"{job.source}: cannot create the output folder {folder}: a file is in the way")
