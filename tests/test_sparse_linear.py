"""Sparse input gradients of linear layers: the same numbers as nn.Linear, the sparse path really taken."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch
from torch import nn

from campp_cli.cam.explain import explain
from campp_cli.models.fast import sparse_linear
from campp_cli.models.fast.sparse_linear import SparseGradLinear, input_grad, sparse_linear_backward


def grad_with_density(n: int, out: int, density: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(n, out, generator=gen)
    return g * (torch.rand(n, out, generator=gen) < density)


@pytest.fixture()
def count_sparse_sums(monkeypatch):
    """The shapes of the gradients each row-skipping sum ran on (so a test knows which path it exercised):
    ``calls["bags"]`` one gradient row's, ``calls["blocks"]`` several rows' shared reads."""
    calls = {"bags": [], "blocks": []}
    for kind, name in (("bags", "_row_bags"), ("blocks", "_row_blocks")):
        real = getattr(sparse_linear, name)

        def spy(grad_out, *args, _real=real, _kind=kind):
            calls[_kind].append(tuple(grad_out.shape))
            return _real(grad_out, *args)

        monkeypatch.setattr(sparse_linear, name, spy)
    return calls


def ran_sparse(calls) -> bool:
    return bool(calls["bags"] or calls["blocks"])


def sums_of(g: torch.Tensor) -> dict[str, int]:
    """Which row-skipping sums ``input_grad`` should run on ``g`` (M, out), and on how many gradient rows
    each, from the rule in its docstring and its constants' comments (reads counted in whole weights)."""
    m, out = g.shape
    nnz = int((g != 0).sum())
    union = int((g != 0).any(dim=0).sum())
    if union <= sparse_linear.FEW_ROWS or m > sparse_linear.MAX_SHARED_ROWS:
        return {}  # nothing live, a few rows gathered at once, or the dense product
    own = (g != 0).sum(dim=1)
    alone_dense = own > sparse_linear.MAX_ROW_SHARE * out
    if m <= sparse_linear.MAX_BAG_ROWS and 0 < int(alone_dense.sum()) < m:
        return sums_of(g[~alone_dense])  # those rows in the dense product, the others as if on their own
    reads = (union + sparse_linear.CACHED_READ * (nnz - union)) / out
    limit = sparse_linear.MAX_ROW_SHARE if m == 1 else sparse_linear.MAX_BAG_READS
    if m <= sparse_linear.MAX_BAG_ROWS and reads <= limit:
        return {"bags": m}
    return {"blocks": m} if m > 1 and union <= sparse_linear.MAX_BLOCK_SHARE * out else {}


@pytest.mark.parametrize("n", [1, 2, 3, 5, 9])
@pytest.mark.parametrize("in_features", [64, 63, 1024])  # even and odd widths (column blocks or not)
@pytest.mark.parametrize("density", [0.0, 0.02, 0.2, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("threads", [1, 2, 4])  # 4 threads, 2 samples: 2 blocks each
def test_input_grad_equals_the_dense_product(n, in_features, density, threads, count_sparse_sums):
    out = 96  # more live rows than FEW_ROWS from 50 % on
    weight = torch.randn(out, in_features, generator=torch.Generator().manual_seed(1))
    g = grad_with_density(n, out, density, seed=n * 100 + in_features)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = input_grad(g, weight)
    finally:
        torch.set_num_threads(before)
    expected = g.double().numpy() @ weight.double().numpy()
    assert got.shape == (n, in_features) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)
    assert {kind: [rows for rows, _ in calls] for kind, calls in count_sparse_sums.items() if calls} \
        == {kind: [rows] for kind, rows in sums_of(g).items()}


@pytest.mark.parametrize("n", [1, 2, 3, 4])
@pytest.mark.parametrize("in_features", [48, 40, 7])  # 3 parts of 16, 4 of 10 (no part of 16 divides 40), whole rows
@pytest.mark.parametrize("shared", [True, False])
def test_bags_in_chunks_and_parts_equal_the_dense_product(n, in_features, shared, monkeypatch):
    """Chunks of 3 weight rows and parts of at most 16 values: rows of several chunks, gradient rows with
    different numbers of chunks (a short one, an empty one) and the same or different live rows."""
    monkeypatch.setattr(sparse_linear, "CHUNK_ROWS", 3)
    monkeypatch.setattr(sparse_linear, "MAX_PART_WIDTH", 16)
    monkeypatch.setattr(sparse_linear, "MIN_PART_WIDTH", 8)
    out = 20
    gen = torch.Generator().manual_seed(n * 10 + in_features)
    weight = torch.randn(out, in_features, generator=gen, dtype=torch.float64)
    live = torch.rand(n if not shared else 1, out, generator=gen) < 0.5
    g = torch.randn(n, out, generator=gen, dtype=torch.float64) * live
    if n > 2:
        g[1] = 0.0  # a row with no live weight rows: no bags of its own
        g[2, 2:] = 0.0  # and one with at most one chunk
        g[2, 0] = 1.5
    nonzero = g != 0
    got = sparse_linear._row_bags(g, weight, nonzero, int(nonzero.sum()))
    np.testing.assert_allclose(got.numpy(), g.numpy() @ weight.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("hot", [[3], [3, 3], [0, 7], [5, 40, 41]])
def test_a_few_live_rows_are_gathered_and_multiplied(hot, count_sparse_sums):
    """A class score's one-hot rows (one per target, the same or other classes): at most FEW_ROWS live weight
    rows in all are gathered at once, neither bags nor blocks."""
    weight = torch.randn(64, 50, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    g = torch.zeros(len(hot), 64, dtype=torch.float64)
    for row, column in enumerate(hot):
        g[row, column] = 1.0 + row
    np.testing.assert_allclose(input_grad(g, weight).numpy(), g.numpy() @ weight.numpy(), rtol=1e-12, atol=0)
    assert not ran_sparse(count_sparse_sums)


@pytest.mark.parametrize("full", [[1], [0], [0, 2], [1, 2, 3]])
def test_rows_that_alone_take_the_dense_product_leave_the_others_their_own_sum(full, count_sparse_sums):
    """Finer-CAM's logits: its target's gradient is live in every row (a softmax), the class score's in one;
    a row live in more than MAX_ROW_SHARE of the weight rows goes to the dense product, the others to bags."""
    out, n = 200, 4 if max(full) > 1 else 2
    gen = torch.Generator().manual_seed(len(full))
    weight = torch.randn(out, 30, dtype=torch.float64, generator=gen)
    g = torch.randn(n, out, dtype=torch.float64, generator=gen) * (torch.rand(n, out, generator=gen) < 0.3)
    g[full] = torch.randn(len(full), out, dtype=torch.float64, generator=gen)  # every row live
    np.testing.assert_allclose(input_grad(g, weight).numpy(), g.numpy() @ weight.numpy(), rtol=1e-12, atol=1e-12)
    assert count_sparse_sums["bags"] == [(n - len(full), out)] and not count_sparse_sums["blocks"]


def test_more_rows_than_share_reads_take_the_dense_product(count_sparse_sums):
    rows = sparse_linear.MAX_SHARED_ROWS + 1
    weight = torch.randn(48, 20)
    g = grad_with_density(rows, 48, 0.1, seed=5)
    np.testing.assert_allclose(input_grad(g, weight).numpy(), g.double().numpy() @ weight.double().numpy(),
                               rtol=1e-5, atol=1e-5)
    assert not ran_sparse(count_sparse_sums)


def test_a_block_boundary_inside_the_live_rows(count_sparse_sums):
    """Rows read in blocks: more live rows than one block holds, and a last block that is not full."""
    out = 3 * sparse_linear.BLOCK_ROWS + 7
    rows = sparse_linear.MAX_BAG_ROWS + 1
    weight = torch.randn(out, 33, dtype=torch.float64)
    g = torch.zeros(rows, out, dtype=torch.float64)
    g[:, ::2] = torch.randn(rows, len(range(0, out, 2)), dtype=torch.float64)
    g[-1, 1] = 3.0  # the last row needs one row the others do not
    np.testing.assert_allclose(input_grad(g, weight).numpy(), g.numpy() @ weight.numpy(), rtol=1e-12, atol=1e-12)
    assert count_sparse_sums["blocks"] == [(rows, out)]


def test_input_grad_zero_rows_of_a_batch_give_zero_gradients():
    weight = torch.randn(10, 8)
    g = torch.zeros(3, 10)
    g[1, 4] = 2.0  # only the middle sample has a gradient
    got = input_grad(g, weight)
    assert torch.equal(got[0], torch.zeros(8)) and torch.equal(got[2], torch.zeros(8))
    torch.testing.assert_close(got[1], 2.0 * weight[4])


def relu_head(seed: int, bias: bool = True) -> nn.Module:
    torch.manual_seed(seed)
    # wide enough that about half of its first layer's 128 rows, more than FEW_ROWS, are live
    return nn.Sequential(nn.Linear(40, 128, bias=bias), nn.ReLU(inplace=True), nn.Dropout(),
                         nn.Linear(128, 16, bias=bias), nn.ReLU(), nn.Linear(16, 5, bias=bias)).eval()


def converted(model: nn.Module) -> nn.Module:
    model = copy.deepcopy(model)
    assert sparse_linear_backward(model) == 3
    return model


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_frozen_head_input_gradient_equals_nn_linear(bias, dtype, count_sparse_sums):
    plain = relu_head(3, bias).to(dtype).requires_grad_(False)
    sparse = converted(plain)
    x = torch.randn(2, 40, dtype=dtype)
    grads = []
    for model in (plain, sparse):
        leaf = x.clone().requires_grad_(True)
        out = model(leaf)
        (grad,) = torch.autograd.grad(out[:, 2].sum(), leaf)
        grads.append((out.detach(), grad))
    torch.testing.assert_close(grads[1][0], grads[0][0])
    torch.testing.assert_close(grads[1][1], grads[0][1])
    assert ran_sparse(count_sparse_sums), "the ReLUs leave sparse gradients: the sparse sum should have run"


def test_trainable_parameters_still_get_their_gradients(count_sparse_sums):
    plain = relu_head(4)
    sparse = converted(plain)
    x = torch.randn(3, 40)
    for model in (plain, sparse):
        model.zero_grad()
        model(x).square().sum().backward()
    for (name, p), q in zip(plain.named_parameters(), sparse.parameters()):
        torch.testing.assert_close(q.grad, p.grad, msg=name)
    assert not ran_sparse(count_sparse_sums)


def test_double_backward_through_the_sparse_path(count_sparse_sums):
    sparse = converted(relu_head(8).double()).requires_grad_(False)
    x = torch.randn(1, 40, dtype=torch.float64, requires_grad=True)  # one sample: ~half the rows
    assert torch.autograd.gradgradcheck(sparse, (x,))
    assert count_sparse_sums["bags"]


def test_no_grad_and_gpu_shaped_calls_are_plain(count_sparse_sums):
    plain = relu_head(5).requires_grad_(False)
    sparse = converted(plain)
    x = torch.randn(4, 40)
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), plain(x))
    x3 = torch.randn(2, 7, 40, requires_grad=True)  # 3-D input: plain path
    torch.testing.assert_close(sparse(x3), plain(x3))
    assert not ran_sparse(count_sparse_sums)


def test_conversion_keeps_names_state_and_pickles():
    plain = relu_head(6)
    sparse = converted(plain)
    assert [n for n, _ in sparse.named_modules()] == [n for n, _ in plain.named_modules()]
    assert all(torch.equal(a, b) for a, b in zip(sparse.state_dict().values(), plain.state_dict().values()))
    assert isinstance(sparse[0], SparseGradLinear)
    buffer = io.BytesIO()
    torch.save(sparse, buffer)
    buffer.seek(0)
    again = torch.load(buffer, weights_only=False)
    x = torch.randn(1, 40)
    torch.testing.assert_close(again(x), plain(x))

    class Subclass(nn.Linear):
        pass

    other = nn.Sequential(Subclass(3, 3))
    assert sparse_linear_backward(other) == 0 and type(other[0]) is Subclass


def test_explain_through_a_converted_head_equals_the_plain_model():
    torch.manual_seed(7)
    plain = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 8 * 8, 64), nn.ReLU(), nn.Dropout(),
        nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10),
    ).eval()
    sparse = copy.deepcopy(plain)
    assert sparse_linear_backward(sparse) == 3
    x = torch.randn(3, 3, 16, 16)
    a = explain(plain, "3", x)
    b = explain(sparse, "3", x)
    np.testing.assert_array_equal(b.classes, a.classes)
    for method in a.maps:
        np.testing.assert_allclose(b.maps[method], a.maps[method], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n", [1, 3])
def test_a_batched_backward_folds_its_targets_into_rows_read_once(n, monkeypatch):
    """torch.func.vmap over autograd.grad, one grad output per target (campp's top-k and Finer-CAM): the same
    gradients as one backward per target, and each layer's weight read once for all T targets (one call on
    T * n rows), not once per target."""
    plain = relu_head(9).double().requires_grad_(False)
    sparse = converted(plain)
    x = torch.randn(n, 40, dtype=torch.float64)
    t = 4
    cotangents = torch.randn(t, n, 5, dtype=torch.float64)
    leaf = x.clone().requires_grad_(True)
    out = plain(leaf)
    expected = torch.stack([torch.autograd.grad(out, leaf, c, retain_graph=True)[0] for c in cotangents])
    calls = []
    real = sparse_linear.input_grad

    def spy(grad_out, weight):
        calls.append(tuple(grad_out.shape))
        return real(grad_out, weight)

    monkeypatch.setattr(sparse_linear, "input_grad", spy)
    leaf = x.clone().requires_grad_(True)
    out = sparse(leaf)
    got = torch.func.vmap(lambda c: torch.autograd.grad(out, leaf, c, retain_graph=True)[0])(cotangents)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    # the three layers' input gradients, each on all t * n rows at once
    assert calls == [(t * n, 5), (t * n, 16), (t * n, 128)]


def test_a_batched_double_backward_through_the_shared_reads():
    """create_graph=True inside the vmap: the targets' gradients are differentiable again (as campp's
    differentiable maps need), equal to the plain head's."""
    plain = relu_head(10).double().requires_grad_(False)
    sparse = converted(plain)
    x = torch.randn(2, 40, dtype=torch.float64)
    found = []
    for model in (plain, sparse):
        cotangents = torch.randn(3, 2, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2),
                                 requires_grad=True)
        leaf = x.clone().requires_grad_(True)
        out = model(leaf)
        grads = torch.func.vmap(lambda c, out=out, leaf=leaf: torch.autograd.grad(
            out, leaf, c, retain_graph=True, create_graph=True)[0])(cotangents)
        # a ReLU head is piecewise linear, so differentiate in the cotangents: 2 J J^T c, through the
        # backward of the shared reads
        (second,) = torch.autograd.grad(grads.square().sum(), cotangents)
        assert second.abs().max() > 0
        found.append((grads.detach(), second))
    torch.testing.assert_close(found[1][0], found[0][0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(found[1][1], found[0][1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("targets", [1, 3])
def test_a_backward_with_no_graph_to_build_calls_the_sum_straight(targets, monkeypatch):
    """Without create_graph, a backward pass (plain, or batched over targets by vmap) calls input_grad
    directly, not through the differentiable _InputGrad and torch.func's custom-function machinery; the
    gradients are still the plain head's; nested vmap levels still work, through _InputGrad."""
    plain = relu_head(11).double().requires_grad_(False)
    sparse = converted(plain)
    x = torch.randn(2, 40, dtype=torch.float64)
    cotangents = torch.randn(targets, 2, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    leaf = x.clone().requires_grad_(True)
    out = plain(leaf)
    expected = torch.stack([torch.autograd.grad(out, leaf, c, retain_graph=True)[0] for c in cotangents])
    through = []
    real = sparse_linear._InputGrad.apply
    monkeypatch.setattr(sparse_linear._InputGrad, "apply", lambda *a: through.append(1) or real(*a))
    leaf = x.clone().requires_grad_(True)
    out = sparse(leaf)
    if targets == 1:
        got = torch.autograd.grad(out, leaf, cotangents[0], retain_graph=True)[0][None]
    else:
        got = torch.func.vmap(lambda c: torch.autograd.grad(out, leaf, c, retain_graph=True)[0])(cotangents)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert through == []
    nested = torch.func.vmap(torch.func.vmap(lambda c: torch.autograd.grad(out, leaf, c, retain_graph=True)[0]))(
        torch.stack([cotangents, 2 * cotangents]))
    torch.testing.assert_close(nested, torch.stack([expected, 2 * expected]), rtol=1e-12, atol=1e-12)
    assert through  # the nested levels went through _InputGrad's vmap rule
