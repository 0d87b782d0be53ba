"""What the model is and how it is loaded: architectures and their sources, layers, devices, weights.

Nothing is imported here: the modules that build models import torch, while :mod:`.preprocessing` and
:mod:`.labels` stay torch-free for the command line's checks before the slow imports.

* :mod:`.spec`: :class:`~.spec.ArchSpec` and the model-source registry (``--arch NAME``, ``PREFIX:NAME``);
* :mod:`.sources`: one file per source (torchvision, EfficientNet-Lite, the paper's VGG16, timm, your code);
* :mod:`.layers`: feature maps, the default layer, layer checks;
* :mod:`.devices`: ``gpu`` -> a device, batch defaults;
* :mod:`.weights`: finding, reading, checking and converting weights (:mod:`.npy`: the paper's vgg16.npy);
* :mod:`.loading`: :func:`~.loading.load_classifier`, :class:`~.loading.Classifier`;
* :mod:`.fast`: prepacked convolutions, sparse linear backward.
"""
