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

#: Which sum ``input_grad`` takes, from the weight rows it would read, counted in weights (one dense
#: product reads one): a chunk of rows read again from cache, for another gradient row with the same live
#: rows, counts CACHED_READ of one read from memory.  Figures from ``benchmarks/sparse_linear.py`` on this
#: project's 2-core machine, VGG16's fc6 (fc7 alike; milliseconds, medians), which set the constants:
#:
#: * One gradient row: bags 4.2, 8.8, 11.4 and 14.3 at 30, 50, 60 and 70 % live, the dense product 12.9:
#:   bags up to MAX_ROW_SHARE of the rows.
#: * Up to MAX_BAG_ROWS gradient rows, where a dense product of several rows costs about 1.6 of one (20.3
#:   to 21.8): bags while they read at most MAX_BAG_READS.  The same 50 % live for all: 8.7, 12.6, 14.7 and
#:   18.5 for 1, 2, 3 and 4 rows (a second row costs CACHED_READ ~ 0.4 of the first); 2 rows at 70 % 19.5,
#:   4 rows at 70 % 26.8 (dense 21.2); 2 and 4 rows of independent patterns (half live each) 15.5 and 26.2,
#:   against 21.0 and 21.6 dense.
#: * Up to MAX_SHARED_ROWS, where the rows any of them needs are at most MAX_BLOCK_SHARE of the weight: those
#:   rows read once, in blocks.  8 and 32 rows at 50 % live: blocks 20.9 and 38.6, dense 24.8 and 43.1, bags
#:   24.0 and 97.4; at 70 % blocks 30.5 and 52.6 against dense 24.3 and 43.4; independent patterns (their
#:   union is all the rows) 46.8 and 76.5 in blocks against 25.2 and 43.7 dense.
#: * Otherwise the dense product.
MAX_ROW_SHARE = 0.6
MAX_BAG_ROWS = 4
MAX_BAG_READS = 1.2
CACHED_READ = 0.4
MAX_SHARED_ROWS = 64
MAX_BLOCK_SHARE = 0.55
BLOCK_ROWS = 32
#: Up to this many live rows in all, they are gathered and multiplied at once: VGG16's fc8 for a class score's
#: one-hot gradient took 0.19 ms so in campp's pass, against 0.46 ms in bags (their index bookkeeping).  With
#: Finer-CAM's second target (live in every row, a softmax) beside it, the dense product of that row and the
#: gathered row: 1.27 ms against 1.6 ms in bags of both.
FEW_ROWS = 32

#: Bags of at most CHUNK_ROWS weight rows over one column part (at most MAX_PART_WIDTH values wide): the bags
#: of the gradient rows that need the same chunk run one after the other, so the chunk (64 rows of 6272
#: floats on fc6: 1.6 MB) is still in cache for the next.  One row half live on fc6 took 8.7 ms so, against
#: 11.0 ms in bags of a whole row's rows over 256-wide parts, and 2 rows 12.6 against 20.7.
CHUNK_ROWS = 64
MAX_PART_WIDTH = 8192
#: Narrower parts than this are not worth their bags: a width with no divisor in between takes whole rows.
MIN_PART_WIDTH = 512


def _parts(in_features: int) -> int:
    """Into how many column parts of equal width to split the weight: the fewest that make a part at most
    MAX_PART_WIDTH wide, a divisor of ``in_features``; 1 where that would make parts narrower than
    MIN_PART_WIDTH."""
    for parts in range(-(-in_features // MAX_PART_WIDTH), in_features // MIN_PART_WIDTH + 1):
        if in_features % parts == 0:
            return parts
    return 1


def _row_bags(grad_out: torch.Tensor, weight: torch.Tensor, nonzero: torch.Tensor, nnz: int) -> torch.Tensor:
    """Each gradient row's weight rows summed by ``embedding_bag`` with per-sample weights: bag (part, chunk,
    gradient row) sums CHUNK_ROWS of the row's live weight rows over one column part, the bags of one chunk
    next to each other (gradient rows with the same live rows read the same chunk from cache); the chunks'
    sums are then added."""
    n, out_features = grad_out.shape
    in_features = weight.shape[1]
    parts = _parts(in_features)
    width = in_features // parts
    samples, rows = nonzero.nonzero(as_tuple=True)  # sample-major, each sample's rows ascending
    counts = nonzero.sum(dim=1)
    starts = torch.cumsum(counts, 0) - counts
    chunk = (torch.arange(nnz, device=rows.device) - starts[samples]) // CHUNK_ROWS
    chunks = int(chunk.max()) + 1
    order = torch.argsort(chunk * n + samples, stable=True)  # chunk-major, then sample
    samples, rows = samples[order], rows[order]
    per_bag = torch.bincount(chunk[order] * n + samples, minlength=chunks * n)
    block = torch.arange(parts, device=rows.device)
    # Bag (p, c, s): weight viewed as (out * parts, in / parts), where row r's part p is r * parts + p.
    indices = (rows.unsqueeze(0) * parts + block.unsqueeze(1)).reshape(-1)
    offsets = (block.unsqueeze(1) * nnz + (torch.cumsum(per_bag, 0) - per_bag).unsqueeze(0)).reshape(-1)
    summed = F.embedding_bag(indices, weight.view(out_features * parts, width), offsets, mode="sum",
                             per_sample_weights=grad_out[samples, rows].repeat(parts))
    return summed.view(parts, chunks, n, width).sum(dim=1).transpose(0, 1).reshape(n, in_features)


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

    At most FEW_ROWS live weight rows in all (a class score's one-hot gradient at the logits): those rows
    gathered and multiplied.  Among up to MAX_BAG_ROWS rows, those live in more than MAX_ROW_SHARE of the
    weight rows (a softmax target's gradient at the logits, as Finer-CAM's) take the dense product and the
    others their own sum.  Up to MAX_BAG_ROWS rows (images, or the targets of a batched backward pass, which
    share their image's ReLU pattern), where they read little enough: ``embedding_bag`` sums the weight
    rows each gradient row needs (:func:`_row_bags`).  Up to MAX_SHARED_ROWS, where the rows any of them
    needs are few enough: those rows read once, in blocks (:func:`_row_blocks`).  Otherwise the dense
    product (the constants' figures are at their definitions)."""
    n, out_features = grad_out.shape
    if not weight.is_contiguous() or n > MAX_SHARED_ROWS:
        return grad_out @ weight
    nonzero = grad_out != 0
    live = nonzero.any(dim=0)
    union = int(live.sum())
    if union == 0:
        return grad_out.new_zeros(n, weight.shape[1])
    if union <= FEW_ROWS:  # a one-hot target's rows: gathered and multiplied
        rows = live.nonzero()[:, 0]
        return grad_out[:, rows] @ weight.index_select(0, rows)
    if n <= MAX_BAG_ROWS:
        counts = nonzero.sum(dim=1)
        full = counts > MAX_ROW_SHARE * out_features
        if 0 < int(full.sum()) < n:  # rows that alone take the dense product take it, the others their own sum
            found = grad_out.new_empty(n, weight.shape[1])
            found[full] = grad_out[full] @ weight
            found[~full] = input_grad(grad_out[~full], weight)
            return found
        nnz = int(counts.sum())
        reads = (union + CACHED_READ * (nnz - union)) / out_features
        if reads <= (MAX_ROW_SHARE if n == 1 else MAX_BAG_READS):
            return _row_bags(grad_out, weight, nonzero, nnz)
    if n > 1 and union <= MAX_BLOCK_SHARE * out_features:
        return _row_blocks(grad_out, weight, live.nonzero()[:, 0])
    return grad_out @ weight


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
        if torch.is_grad_enabled():  # create_graph: the gradient is differentiated in turn
            return _InputGrad.apply(grad_out, weight), None, None
        return _batched_input_grad(grad_out, weight), None, None


def _batched_input_grad(grad_out: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """:func:`input_grad` with no graph to build, called straight, not through :class:`_InputGrad` and
    torch.func's machinery for a custom function: in a batched backward pass (one ``vmap`` level over
    ``autograd.grad``) the targets are taken out of the batched tensor, folded into rows and put back.  A
    head of three 256-wide layers (where the products cost nothing), two targets: 1.3 ms of bookkeeping
    against 2.1 ms through :class:`_InputGrad`.  Anything else (nested ``vmap``, a torch without these
    functions) goes through :class:`_InputGrad`."""
    functorch = getattr(torch._C, "_functorch", None)
    try:
        batched = functorch.is_batchedtensor(grad_out)
    except AttributeError:
        return _InputGrad.apply(grad_out, weight)
    if not batched:
        return input_grad(grad_out, weight)
    try:
        level = functorch.maybe_get_level(grad_out)
        plain, dim = functorch._unwrap_batched(grad_out, level)
        if functorch.is_batchedtensor(plain) or plain.dim() != 3:
            return _InputGrad.apply(grad_out, weight)
        plain = plain.movedim(dim, 0)
        b, n, out_features = plain.shape
        found = input_grad(plain.reshape(b * n, out_features), weight).view(b, n, -1)
        return functorch._add_batch_dim(found, 0, level)
    except (AttributeError, RuntimeError, TypeError):
        return _InputGrad.apply(grad_out, weight)


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
