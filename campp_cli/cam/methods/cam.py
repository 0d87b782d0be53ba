"""CAM (Zhou et al., CVPR 2016, arXiv:1512.04150): the head's class weights over the last feature map.

For a model whose head is a global average pool of the layer's output and
one linear layer, the class score is S_c = sum_k W_ck mean_ij A_kij + b_c, and
CAM is sum_k W_ck A_k: no gradient, one forward pass.  campp finds W by
checking that a linear layer of the model reproduces the pass's logits from
A's spatial means; elsewhere (VGG16's three-layer head, a transformer's class
token) CAM is undefined and refused in one line.  Where it applies Grad-CAM
equals it: g = W_c / (h w) at every position.  So ``all`` leaves CAM out: where
it is defined it adds nothing to Grad-CAM, and elsewhere it would refuse the
run.
"""

from . import channel_sum, register_method


@register_method("cam", title="CAM", needs="activations", uses=("head",), in_all=False,
                 reference="Zhou et al., CVPR 2016, arXiv:1512.04150",
                 summary="w_k = W_ck, the class weight of a global-average-pool + linear head (no gradient)")
def cam(inp):
    import torch

    weight, _ = inp.head
    classes = torch.as_tensor(inp.classes, dtype=torch.long, device=weight.device)
    return channel_sum(weight[classes].to(inp.acts), inp.acts)  # float64: the rows of the explained classes
