"""Linear layers whose backward pass to the input reads only the weight rows that matter.

The gradient of a linear layer's input is ``g @ W``: every row ``j`` of the
weight is scaled by ``g[:, j]`` and summed.  Behind a ReLU, ``g`` is zero
wherever the unit was off (about half of them with random weights; with
trained ones it depends on the model), and those rows contribute nothing.  A dense product still
reads them: for VGG16's fc6 that is 411 MB, memory-bound, and the largest
cost of campp's backward pass on the CPU.  :class:`SparseGradLinear` sums
only the rows with a non-zero gradient (for a few gradient rows ``embedding_bag``
with per-sample weights, which gathers rows and splits the work over threads;
for more, the rows any of them needs, read once in blocks), and falls back
to the dense product when that would read more.  A batched backward pass
(``torch.func.vmap`` over ``torch.autograd.grad``: one grad output per target,
as campp's top-k and Finer-CAM ask) folds its targets into rows, so that the
weight is read once for all of them.

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

#: Up to this many gradient rows (images, or the targets of a batched backward pass), each row's weight
#: rows are summed by ``embedding_bag`` in column parts about PART_WIDTH values wide: the bags of one part,
#: one per gradient row, run one after the other, so rows that several gradients need are still in cache
#: for the next.  From there up to MAX_SHARED_ROWS gradient rows, the rows any of them needs are read once,
#: BLOCK_ROWS at a time; beyond, the dense product.  On VGG16's fc6 (fc7), 2 cores, half the rows live,
#: the same for every gradient row: 1, 2, 3, 4 and 6 rows took 11.1 (2.3), 14.0 (2.5), 17.1 (3.3), 19.3
#: (3.4) and 26.8 (4.7) ms as bags, 14.8 (4.6), 18.7 (5.3), 18.5 (4.6) and 19.5 (8.6) ms in blocks from
#: 2 rows on; 8 rows 21 (5.6) ms in blocks; the dense product 20 ms for one row and 40 to 54 ms for 2 to 8
#: (MKL's small-M product on this shape).  Rows of independent patterns (their union is all the rows):
#: 8, 16, 32 and 64 took 39, 48, 66 and 108 ms in blocks against 52, 58, 75 and 113 ms dense; at 128 rows
#: the dense product was faster.
MAX_BAG_ROWS = 4
PART_WIDTH = 256
MAX_SHARED_ROWS = 64
BLOCK_ROWS = 32


def _parts(n_samples: int, in_features: int) -> int:
    """Into how many column parts to split each gradient row's sum: about PART_WIDTH values wide, and at
    least one per thread; a divisor of ``in_features`` (1 where it has none below that)."""
    want = max(1, -(-torch.get_num_threads() // max(1, n_samples)), round(in_features / PART_WIDTH))
    for parts in range(want, 0, -1):
        if in_features % parts == 0:
            return parts
    return 1


def _row_bags(grad_out: torch.Tensor, weight: torch.Tensor, nonzero: torch.Tensor, nnz: int) -> torch.Tensor:
    """Each gradient row's weight rows summed by ``embedding_bag`` with per-sample weights, in column parts
    (:func:`_parts`), the bags of one part next to each other."""
    n, out_features = grad_out.shape
    in_features = weight.shape[1]
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


def _row_blocks(grad_out: torch.Tensor, weight: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
    """``grad_out @ weight`` over the ``live`` rows only, each read once: gathered BLOCK_ROWS at a time (a
    block stays in cache) and multiplied into every gradient row."""
    found = grad_out.new_zeros(grad_out.shape[0], weight.shape[1])
    wanted = grad_out[:, live]
    block = weight.new_empty(min(BLOCK_ROWS, live.numel()), weight.shape[1])  # one buffer for every block
    for start in range(0, live.numel(), BLOCK_ROWS):
        rows = live[start:start + BLOCK_ROWS]
        gathered = torch.index_select(weight, 0, rows, out=block[:rows.numel()])
        found.addmm_(wanted[:, start:start + BLOCK_ROWS], gathered)
    return found


def input_grad(grad_out: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``grad_out @ weight`` for 2-D ``grad_out`` (M, out), skipping weight rows that no gradient needs.

    Up to MAX_BAG_ROWS rows (images, or the targets of a batched backward pass, which share their image's
    ReLU pattern): ``embedding_bag`` sums the weight rows each gradient row needs (:func:`_row_bags`).  Up
    to MAX_SHARED_ROWS: the rows any of them needs are read once, in blocks (:func:`_row_blocks`).
    Otherwise, or where one row needs most of the weight, the dense product."""
    n, out_features = grad_out.shape
    if not weight.is_contiguous() or n > MAX_SHARED_ROWS:
        return grad_out @ weight
    nonzero = grad_out != 0
    if n <= MAX_BAG_ROWS:
        nnz = int(nonzero.sum())
        if n == 1 and nnz > MAX_ROW_SHARE * out_features:
            return grad_out @ weight
        if nnz == 0:
            return grad_out.new_zeros(n, weight.shape[1])
        return _row_bags(grad_out, weight, nonzero, nnz)
    live = nonzero.any(dim=0).nonzero()[:, 0]
    if live.numel() == 0:
        return grad_out.new_zeros(n, weight.shape[1])
    return _row_blocks(grad_out, weight, live)


class _InputGrad(torch.autograd.Function):
    """:func:`input_grad` as an operation: differentiable in ``grad_out`` (a double backward), and with a
    vmap rule, so that a batched backward pass (``torch.func.vmap`` over ``torch.autograd.grad``, one grad
    output per target) folds its targets into rows and reads the weight once for all of them."""

    @staticmethod
    def forward(grad_out, weight):
        return input_grad(grad_out, weight)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])

    @staticmethod
    def backward(ctx, upstream):
        (weight,) = ctx.saved_tensors
        return upstream @ weight.T, None

    @staticmethod
    def vmap(info, in_dims, grad_out, weight):
        g_dim, w_dim = in_dims
        if w_dim is not None:  # a batched weight: no rows to share
            return torch.matmul(grad_out if g_dim is None else grad_out.movedim(g_dim, 0), weight.movedim(w_dim, 0)), 0
        if g_dim is None:
            return _InputGrad.apply(grad_out, weight), None
        grad_out = grad_out.movedim(g_dim, 0)
        b, n, out_features = grad_out.shape
        return _InputGrad.apply(grad_out.reshape(b * n, out_features), weight).view(b, n, -1), 0


class _LinearSparseInputGrad(torch.autograd.Function):
    """``F.linear`` with only the input differentiable, its gradient from :func:`input_grad`."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(weight)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        (weight,) = ctx.saved_tensors
        return _InputGrad.apply(grad_out, weight), None, None


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
