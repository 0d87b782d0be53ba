"""Ablation-CAM (Desai & Ramaswamy, WACV 2020): how much the class score drops without each channel.

w_k = (y_c - y_c^k) / |y_c|, where y_c is the explained class's score (the
run's ``--score``, the logit by default, as in the paper) and y_c^k the score
when the model goes on from the layer with channel k set to zero.  A channel
that is already zero everywhere changes nothing when ablated: weight 0,
without a pass.  (Unlike Score-CAM, a constant non-zero channel does get a
pass: removing it changes the score.)  One forward pass per image, plus one
per live channel and image, in batches of ``score_batch`` across channels
and images; y_c comes from the same kind of pass (the layer's output put
back unchanged), so that both scores carry the same rounding.
The paper divides by y_c; campp divides by its magnitude, which is the same
where y_c > 0 and keeps a drop a drop where y_c < 0 (a class below the top,
``--score log_probability``, a multi-label model's unlikely label), where
dividing by y_c would flip every weight and show the opposite map.
pytorch-grad-cam's AblationCAM divides by y_c, one image at a time and
ablating every channel.
"""

from . import channel_sum, nonzero, register_method
from .scorecam import SCORE_BATCH


def weights(inp):
    """(N, K) Ablation-CAM weights; channels that are zero everywhere 0."""
    import torch

    acts = inp.acts
    n, k = acts.shape[:2]
    classes = torch.as_tensor(inp.classes, dtype=torch.long)
    live = acts.flatten(2).abs().amax(dim=2) > 0
    todo = [(int(i), int(c)) for i, c in torch.nonzero(live)]
    batch = max(1, int(inp.settings["score_batch"]))
    planned = getattr(inp.progress, "planned", None)
    if planned is not None:
        planned(len(todo) + n, n)
    base = torch.cat([inp.relayer(acts[start:start + batch], list(range(start, min(n, start + batch))),
                                  classes[start:start + batch]) for start in range(0, n, batch)]).double()
    if inp.progress is not None:
        inp.progress(n)
    w = torch.zeros(n, k, dtype=acts.dtype, device=acts.device)
    for start in range(0, len(todo), batch):
        chunk = todo[start:start + batch]
        rows = [i for i, _ in chunk]
        grids = acts[rows].clone()
        grids[torch.arange(len(chunk)), [c for _, c in chunk]] = 0
        scores = inp.relayer(grids, rows, classes[rows]).double().cpu()
        for (i, c), y in zip(chunk, scores.tolist()):
            w[i, c] = y
        if inp.progress is not None:
            inp.progress(len(chunk))
    y = base.to(w.device)[:, None]
    ablated = torch.where(live, w, y)  # a channel not ablated keeps the score: weight 0
    return (y - ablated) / nonzero(y.abs())


@register_method("ablationcam", title="Ablation-CAM", needs="forward passes", uses=("relayer",),
                 settings=(SCORE_BATCH,), reference="Desai & Ramaswamy, WACV 2020",
                 cost="one forward + (live channels + 1) extra forward passes per image",
                 summary="w_k = (y_c - y_c without channel k) / |y_c|")
def ablationcam(inp):
    return channel_sum(weights(inp), inp.acts)
