"""LayerCAM (Jiang et al., IEEE TIP 2021): each activation weighted by its own positive gradient."""

from . import register_method


@register_method("layercam", title="LayerCAM", reference="Jiang et al., IEEE TIP 30, 2021",
                 summary="sum_k relu(g_k) * A_k")
def layercam(inp):
    return (inp.grads.clamp(min=0) * inp.acts).sum(dim=1)
