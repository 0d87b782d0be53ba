"""torchvision's classifiers by bare name (``--arch resnet50``), their weights downloaded by torchvision."""

from __future__ import annotations

import functools
import os
import warnings

from ..preprocessing import INTERPOLATIONS, Preprocessing
from ..spec import ArchSpec, Source, add_source


def _torchvision():
    """torchvision, imported when an architecture of its own is asked for (it takes a second to import:
    its ops pull in torch._dynamo), never for EfficientNet-Lite, timm or your own model."""
    import torchvision

    return torchvision


def _build(name: str, **kwargs):
    with warnings.catch_warnings():  # initialisation notices, irrelevant once weights load
        warnings.simplefilter("ignore", FutureWarning)
        return _torchvision().models.get_model(name, weights=None, **kwargs)


def _interpolation_name(mode) -> str:
    """torchvision's InterpolationMode as one of INTERPOLATIONS (bilinear when it has no equivalent)."""
    name = str(getattr(mode, "value", mode)).lower()
    return name if name in INTERPOLATIONS else "bilinear"


def torchvision_spec(name: str, default_layer: str | None = None) -> ArchSpec:
    """torchvision's architecture ``name``, with its default weights' classes, transforms and download."""
    weights = _torchvision().models.get_model_weights(name).DEFAULT
    transforms = weights.transforms()
    return ArchSpec(
        name=name,
        builder=functools.partial(_build, name),
        categories=tuple(weights.meta["categories"]),
        # The filter torchvision's own transforms resize with (bilinear for most, bicubic for some).
        preprocessing=Preprocessing(mean=tuple(transforms.mean), std=tuple(transforms.std),
                                    interpolation=_interpolation_name(transforms.interpolation)),
        input_size=int(transforms.crop_size[0]),
        weights_filename=os.path.basename(weights.url),
        weights_url=weights.url,
        default_layer=default_layer,
    )


@functools.lru_cache(maxsize=None)
def torchvision_names() -> frozenset[str]:
    """torchvision's classification architectures."""
    models = _torchvision().models
    return frozenset(models.list_models(module=models))


SOURCE = add_source(Source("torchvision", torchvision_spec, names=torchvision_names,
                           help="any torchvision classifier, by its name"))
