"""Score-CAM (Wang et al., CVPR-W 2020, arXiv:1910.01279): channels weighted by the model's own score.

Each channel A_k is upsampled bilinearly to the input size and min-max
normalised to [0, 1] (H_k); its weight is the softmax probability of the
explained class for the image (RGB in [0, 1], before the model's
normalisation) multiplied by H_k, as the official Score-CAM code computes it.
A constant channel has no shape to show and gets weight 0, without a pass.

That costs one forward pass per non-constant channel and image (512 for
VGG16's last block), run without autograd in batches of ``score_batch``
across channels and images.  pytorch-grad-cam's ScoreCAM differs: it masks
the *normalised* input, takes the logits and applies a softmax over the
channels; torchcam's subtracts the logit of the unmasked input first, then
takes the same softmax over channels.
"""

from ...registry import Setting
from . import channel_sum, nonzero, register_method

#: Images per extra forward pass, unless ``score_batch=`` (``--score-batch``) says otherwise.
DEFAULT_SCORE_BATCH = 32

#: ``score_batch=`` (``--score-batch``).
SCORE_BATCH = Setting("score_batch", int, "N", "Images per forward pass for methods that need extra passes "
                      "(Score-CAM).", minimum=1, maximum=4096, default=DEFAULT_SCORE_BATCH)


def weights(inp, samples: int = 1, vary=None, name: str = "scorecam"):
    """(N, K) Score-CAM weights; constant channels 0.

    With ``vary(masks, j) -> masks`` (SS-CAM's noise, IS-CAM's scales), each channel's mask is scored in
    ``samples`` variants, the j-th being ``vary(mask, j)``, and its weight is their mean: the passes of
    every variant, channel and image share batches of ``score_batch``.
    """
    import torch
    import torch.nn.functional as F

    if inp.score is None or inp.image is None:
        raise ValueError(f"{name} needs the model: call campp_cli.explain with the image batch")
    acts, image = inp.acts, inp.image
    n, k = acts.shape[:2]
    size = image.shape[-2:]
    flat = acts.flatten(2)
    live = flat.amax(dim=2) > flat.amin(dim=2)  # a constant low-resolution channel upsamples to a constant
    todo = [(int(i), int(c), j) for i, c in torch.nonzero(live) for j in range(samples)]
    classes = torch.as_tensor(inp.classes, dtype=torch.long, device=image.device)
    w = torch.zeros(n, k, dtype=acts.dtype, device=acts.device)
    batch = max(1, int(inp.settings["score_batch"]))
    planned = getattr(inp.progress, "planned", None)  # a progress object that also wants the count to come
    if planned is not None:
        planned(len(todo), n)
    for start in range(0, len(todo), batch):
        chunk = todo[start:start + batch]
        masks, owners = [], []
        for i in sorted({i for i, _, _ in chunk}):
            mine = [(c, j) for r, c, j in chunk if r == i]
            channels = sorted({c for c, _ in mine})
            up = F.interpolate(acts[i, channels][None].float(), size=size, mode="bilinear", align_corners=False)[0]
            lo = up.amin(dim=(1, 2), keepdim=True)
            span = up.amax(dim=(1, 2), keepdim=True) - lo
            normed = dict(zip(channels, (up - lo) / nonzero(span)))
            for c, j in mine:
                masks.append(normed[c] if vary is None else vary(normed[c], j))
                owners.append((i, c))
        masks = torch.stack(masks).to(image.dtype)
        rows = [i for i, _ in owners]
        probs = inp.score(image[rows] * masks[:, None], classes[rows])
        for (i, c), p in zip(owners, probs.tolist()):
            w[i, c] += p / samples
        if inp.progress is not None:
            inp.progress(len(chunk))
    return w


@register_method("scorecam", title="Score-CAM", needs="forward passes",
                 reference="Wang et al., CVPR-W 2020, arXiv:1910.01279",
                 summary="w_k = softmax probability of the class on the image x min-max(upsampled A_k)",
                 settings=(SCORE_BATCH,))
def scorecam(inp):
    return channel_sum(weights(inp), inp.acts)
