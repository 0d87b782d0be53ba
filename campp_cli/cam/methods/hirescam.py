"""HiResCAM (Draelos & Carin, arXiv:2011.08891): the gradient times the activation, element-wise, no pooling."""

from . import register_method, terms_sum


@register_method("hirescam", title="HiResCAM", reference="Draelos & Carin, arXiv:2011.08891",
                 summary="sum_k g_k * A_k, element-wise")
def hirescam(inp):
    return terms_sum(inp.grads * inp.acts)
