"""The built-in model sources, one file each; importing this package registers them (see
:mod:`campp_cli.models.spec`).

The order matters: a bare name is answered by the first source that serves it, so the paper's VGG16 (its
own default layer) comes before torchvision's other architectures.  Your own code (``--model``) is not a
registered source: it is a module or a function, not a name (see :mod:`.user`).
"""

# isort: off
from . import efficientnet_lite  # noqa: F401 (registers efficientnet_lite0..2)
from . import vgg16  # noqa: F401 (registers vgg16, before torchvision's)
from . import torchvision  # noqa: F401 (registers every torchvision classifier)
from . import timm  # noqa: F401 (registers timm:NAME)
# isort: on
