"""Where the model runs: ``gpu`` (``-gpu``) as a torch device, its description, the batch size it suits.

torch is imported inside the functions: the run's stages import this module for the batch size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from ..errors import UsageError

if TYPE_CHECKING:
    import torch


def resolve_device(gpu: int | None, warn: Callable[[str], None] | None = None) -> torch.device:
    """``None``: GPU 0 when CUDA works, else the CPU; ``-1``: the CPU; ``n``: GPU n.

    ``warn``: on a machine without CUDA, ``n`` is the CPU after one line given to ``warn`` (the command
    line's way, as the paper's TensorFlow code ran there); without it, a usage error.  An index that does
    not exist on a machine with CUDA is always an error naming the devices there.
    """
    import torch

    if gpu is None:
        return torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")
    if gpu < -1:
        raise UsageError("use a CUDA device index (0, 1, ...) or -1 for the CPU", param="gpu", value=gpu)
    if gpu == -1:
        return torch.device("cpu")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0 and warn is not None:
        warn(f"-gpu {gpu}: no CUDA device on this machine; running on the CPU (-gpu -1 says so)")
        return torch.device("cpu")
    if count == 0:
        raise UsageError("no CUDA device is available on this machine; use -gpu -1 for the CPU", param="gpu",
                         value=gpu)
    if gpu >= count:
        names = ", ".join(f"{i} ({torch.cuda.get_device_name(i)})" for i in range(count))
        raise UsageError(f"no such CUDA device; this machine has: {names}; -1 is the CPU", param="gpu", value=gpu)
    return torch.device(f"cuda:{gpu}")


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        import torch

        return f"{device} ({torch.cuda.get_device_name(device)})"
    return "cpu"


def on_cuda(device: "torch.device | str") -> bool:
    return getattr(device, "type", str(device)).startswith("cuda")


def default_batch_size(device: "torch.device | str") -> int:
    """Big enough to keep the device busy, small enough for memory (VGG16 at 224: ~0.1 GB an image on CUDA)."""
    return 32 if on_cuda(device) else 8


def default_eval_batch(device: "torch.device | str") -> int:
    """Perturbed images per forward pass: a GPU wants hundreds; on a CPU 8 (measured on 20 photos, 2 cores:
    8 as fast as 16 and 18 % faster than 32, with a third less peak memory: each large activation is
    page-faulted afresh, so a big batch costs more than it saves)."""
    return 256 if on_cuda(device) else 8


def versions() -> dict[str, str]:
    """What a run's records name: campp's, torch's and Python's versions."""
    import platform

    import torch

    from .. import __version__

    return {"campp": __version__, "torch": torch.__version__, "python": platform.python_version()}
