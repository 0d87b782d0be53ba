"""The Grad-CAM++ paper's model: torchvision's VGG16 explained at the paper's layer.

Its weights: torchvision's download, or the paper's own ``vgg16.npy`` (read by :mod:`campp_cli.models.npy`,
with its Caffe preprocessing).
"""

from __future__ import annotations

from ..spec import ArchSpec, Source, add_source

#: The paper explains the ReLU after conv5_3 (14x14 at 224).
PAPER_LAYER = "features.29"


def vgg16_spec(name: str = "vgg16") -> ArchSpec:
    from .torchvision import torchvision_spec

    return torchvision_spec("vgg16", default_layer=PAPER_LAYER)


SOURCE = add_source(Source("vgg16", vgg16_spec, names=lambda: ("vgg16",), help="the paper's VGG16"))
