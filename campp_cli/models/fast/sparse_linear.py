"""Linear layers whose backward pass to the input reads only the weight rows that matter.

The gradient of a linear layer's input is ``g @ W``: every row ``j`` of the
weight is scaled by ``g[:, j]`` and summed.  Behind a ReLU, ``g`` is zero
wherever the unit was off (about half of them with random weights; with
trained ones it depends on the model), and those rows contribute nothing.  A dense product still
reads them: for VGG16's fc6 that is 411 MB, memory-bound, and the largest
cost of campp's backward pass on the CPU.  :class:`SparseGradLinear` sums
only the rows with a non-zero gradient (``embedding_bag`` with per-sample
weights, which gathers rows and splits the work over threads), and falls
back to the dense product when that would read more.

It is used only where campp's pass needs it: CPU, float32/float64, the
input requiring grad and neither weight nor bias requiring it (parameters
frozen, as :class:`campp_cli.cam.FeatureTap` does).  Otherwise it is a
plain ``nn.Linear``; a model converted here still trains.  The results
equal the dense product to float rounding (the sum runs in another order).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .packing import swap_cpu_class

#: The sparse sum is taken when it reads at most this share of the rows one
#: dense product reads.  Gathered rows stream a little slower than a dense
#: pass: on VGG16's fc6, one image, 2 cores, the sparse sum took 6.6, 12.1,
#: 14.1, 16.5 and 18.8 ms at 30, 50, 60, 70 and 80 % of the rows, the dense
#: product 17.2 ms.
MAX_ROW_SHARE = 0.6


def _parts(n_samples: int, in_features: int) -> int:
    """Into how many column blocks to split each sample's sum, so every thread has one."""
    want = max(1, torch.get_num_threads() // max(1, n_samples))
    for parts in range(want, 0, -1):
        if in_features % parts == 0:
            return parts
    return 1


def input_grad(grad_out: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``grad_out @ weight`` for 2-D ``grad_out`` (N, out), skipping rows whose gradient is zero."""
    n, out_features = grad_out.shape
    in_features = weight.shape[1]
    nonzero = grad_out != 0
    nnz = int(nonzero.sum())
    if nnz > MAX_ROW_SHARE * out_features or not weight.is_contiguous():
        return grad_out @ weight
    if nnz == 0:
        return grad_out.new_zeros(n, in_features)
    parts = _parts(n, in_features)
    samples, rows = nonzero.nonzero(as_tuple=True)  # sample-major order
    # Bag (p, s) sums block p of the rows of sample s: weight viewed as (out * parts, in / parts).
    block = torch.arange(parts, device=rows.device)
    indices = (rows.unsqueeze(0) * parts + block.unsqueeze(1)).reshape(-1)
    counts = nonzero.sum(dim=1)
    starts = torch.cumsum(counts, 0) - counts
    offsets = (block.unsqueeze(1) * nnz + starts.unsqueeze(0)).reshape(-1)
    summed = F.embedding_bag(indices, weight.view(out_features * parts, in_features // parts), offsets,
                             mode="sum", per_sample_weights=grad_out[samples, rows].repeat(parts))
    return summed.view(parts, n, in_features // parts).transpose(0, 1).reshape(n, in_features)


class _LinearSparseInputGrad(torch.autograd.Function):
    """``F.linear`` with only the input differentiable, its gradient from :func:`input_grad`."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(weight)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        # Built from differentiable ops, so a double backward (create_graph=True) still works.
        (weight,) = ctx.saved_tensors
        return input_grad(grad_out, weight), None, None


class SparseGradLinear(nn.Linear):
    """``nn.Linear`` whose input gradient skips weight rows with a zero output gradient (see module doc)."""

    def _sparse_backward_applies(self, x: torch.Tensor) -> bool:
        if not (torch.is_grad_enabled() and x.requires_grad and x.dim() == 2):
            return False
        if self.weight.requires_grad or (self.bias is not None and self.bias.requires_grad):
            return False
        if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64) or x.dtype != self.weight.dtype:
            return False
        return not torch.is_autocast_enabled("cpu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._sparse_backward_applies(x):
            return _LinearSparseInputGrad.apply(x, self.weight, self.bias)
        return super().forward(x)


def sparse_linear_backward(model: nn.Module) -> int:
    """Turn every plain CPU ``nn.Linear`` of ``model`` into a :class:`SparseGradLinear` (see
    :func:`campp_cli.models.fast.packing.swap_cpu_class`)."""
    return swap_cpu_class(model, nn.Linear, SparseGradLinear)
