"""LayerCAM (Jiang et al., IEEE TIP 2021): each activation weighted by its own positive gradient."""

from . import register_method, terms_sum


@register_method("layercam", title="LayerCAM", reference="Jiang et al., IEEE TIP 30, 2021",
                 summary="sum_k relu(g_k) * A_k")
def layercam(inp):
    return terms_sum(inp.grads.clamp(min=0) * inp.acts)
