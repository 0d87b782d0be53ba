"""``--arch timm:NAME``: timm's architectures, built offline; their weights from --weights, ``models/`` or
timm's own cache (campp itself does not download them)."""

from __future__ import annotations

import os
from pathlib import Path

from ...errors import UsageError, suggest
from ..labels import imagenet_categories, numbered
from ..preprocessing import INTERPOLATIONS, Preprocessing
from ..spec import ArchSpec, register_source, sources


def _timm():
    try:
        import timm
        from timm.models import get_pretrained_cfg
    except ImportError:
        return None, None
    return timm, get_pretrained_cfg


def _preprocessing(cfg) -> tuple[Preprocessing, int]:
    """timm's configuration's normalisation and interpolation, and its input size."""
    size = int(cfg.input_size[-1]) if cfg is not None and cfg.input_size else 224
    mean = tuple(cfg.mean) if cfg is not None and cfg.mean else Preprocessing().mean
    std = tuple(cfg.std) if cfg is not None and cfg.std else Preprocessing().std
    interpolation = cfg.interpolation if cfg is not None and cfg.interpolation in INTERPOLATIONS else "bilinear"
    return Preprocessing(mean=mean, std=std, interpolation=interpolation), size


def _hub_cache(hub: str | None):
    """The function that finds timm's weights of ``hub`` in Hugging Face's cache."""

    def cached() -> Path | None:
        if not hub:
            return None
        from huggingface_hub import try_to_load_from_cache

        for filename in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(hub, filename)
            if isinstance(found, str) and os.path.isfile(found):
                return Path(found)
        return None

    return cached


def timm_spec(name: str) -> ArchSpec:
    """A timm architecture, built offline (``pretrained=False``); its weights from --weights or timm's cache."""
    timm, get_pretrained_cfg = _timm()
    if timm is None:
        raise UsageError("needs timm: pip install 'campp[timm]'", param="arch", value=f"timm:{name}")
    if not name or not timm.is_model(name):
        raise UsageError(f"timm has no such architecture{suggest(name, timm.list_models(), n=3)}", param="arch",
                         value=f"timm:{name}")
    cfg = get_pretrained_cfg(name)
    classes = int(cfg.num_classes) if cfg is not None and cfg.num_classes else 1000
    categories = imagenet_categories() if classes == 1000 else tuple(numbered(classes))
    preprocessing, size = _preprocessing(cfg)

    def build(**kwargs):
        return timm.create_model(name, pretrained=False, **kwargs)

    hub = cfg.hf_hub_id if cfg is not None else None
    spec = ArchSpec(name=f"timm:{name}", builder=build, categories=categories, preprocessing=preprocessing,
                    input_size=size, weights_filename=f"timm_{name.replace('/', '_')}.pth",
                    cached_weights=_hub_cache(hub), hub_id=hub,
                    weights_missing=lambda looked: missing_weights(spec, looked))
    return spec


def missing_weights(spec: ArchSpec, looked: str) -> str:
    """timm's weights are not there: where campp looked, and the commands that put them there."""
    from ..weights import models_dir

    name = spec.name.partition(":")[2]
    target = models_dir().absolute() / spec.weights_filename
    save = (f"python -c \"import timm, torch; torch.save(timm.create_model('{name}', pretrained=True)"
            f".state_dict(), '{target}')\"")
    if spec.hub_id:
        from huggingface_hub.constants import HF_HUB_CACHE

        cache = Path(HF_HUB_CACHE) / f"models--{spec.hub_id.replace('/', '--')}"
        looked += f", then Hugging Face's cache {cache} (model.safetensors or pytorch_model.bin)"
        fetch = f"huggingface-cli download {spec.hub_id} model.safetensors (fills that cache)"
    else:
        fetch = None
    ways = f"on a machine with network access, {save}" + (f", or {fetch}" if fetch else "")
    return (f"no {spec.name} weights found: looked for {looked}; campp itself does not download timm's "
            f"weights. Fix: {ways}; copy the file (or the cache folder) to this machine, or pass --weights PATH")


register_source("timm", timm_spec, help="timm's architectures (their weights from --weights or timm's cache)",
                extra="timm")
SOURCE = sources().get("timm")
