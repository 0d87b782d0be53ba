"""SS-CAM (Wang et al. 2020, arXiv:2006.14255): Score-CAM with its masks smoothed by noise.

Each channel's Score-CAM mask M_k (A_k upsampled bilinearly, min-max
normalised) is scored ``sscam_samples`` times with Gaussian noise of standard
deviation ``sscam_sigma`` added to it, and its weight is the mean of those
softmax probabilities of the explained class.  The noise is drawn once per
run from a generator seeded with ``sscam_seed`` (on the CPU, so every device
gets the same noise) and the same samples serve every channel and image
(common random numbers): the same photo always gives the same map, whatever
its batch, and the channels' weights differ by their masks, not their noise.
Constant channels get weight 0 without a pass, as in Score-CAM.  It costs
``sscam_samples`` times Score-CAM's passes.  torchcam's SSCAM adds the noise
before its normalisation and takes a softmax over the channels' logit gains.
"""

from ...registry import Setting
from . import channel_sum, register_method
from .scorecam import SCORE_BATCH, weights

#: ``sscam_samples=`` (``--sscam-samples``).
SAMPLES = Setting("sscam_samples", int, "N", "SS-CAM: noisy copies of each mask scored.", minimum=1,
                  maximum=1000, default=35)

#: ``sscam_sigma=`` (``--sscam-sigma``).
SIGMA = Setting("sscam_sigma", float, "S", "SS-CAM: standard deviation of the noise added to each [0, 1] "
                "mask.", minimum=0.0, maximum=100.0, default=2.0)

#: ``sscam_seed=`` (``--sscam-seed``).
SEED = Setting("sscam_seed", int, "N", "SS-CAM: seed of its noise.", minimum=0, maximum=2 ** 63 - 1, default=0)


def noise(samples: int, size, sigma: float, seed: int):
    """The (samples, H, W) float32 noise SS-CAM adds to every mask: N(0, sigma^2), drawn on the CPU."""
    import torch

    generator = torch.Generator().manual_seed(int(seed))
    return torch.randn((samples, *size), generator=generator) * sigma


@register_method("sscam", title="SS-CAM", needs="forward passes", settings=(SCORE_BATCH, SAMPLES, SIGMA, SEED),
                 reference="Wang et al. 2020, arXiv:2006.14255",
                 cost="one forward + K x sscam_samples extra forward passes per image",
                 summary="Score-CAM weights averaged over noisy copies of each mask")
def sscam(inp):
    s = inp.settings
    deltas = noise(s["sscam_samples"], inp.image.shape[-2:], s["sscam_sigma"], s["sscam_seed"]).to(inp.image.device)
    return channel_sum(weights(inp, s["sscam_samples"], lambda mask, j: mask + deltas[j], "sscam"), inp.acts)
