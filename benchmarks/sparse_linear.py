"""The row-skipping input gradient of campp's linear layers: ``python benchmarks/sparse_linear.py [--repeats 15]``.

Prints JSON: milliseconds (medians) of ``g @ W`` on VGG16's fc6 (4096 x 25088) and fc7 (4096 x 4096)
shapes with random weights (speed does not depend on their values), one thread per core:

1. share: one gradient row with 10 to 90 % of its entries non-zero: the dense product against the sums
   in bags (``_row_bags``), which decides ``MAX_ROW_SHARE``;
2. shared: 1 to 64 gradient rows with the same non-zero entries (the targets of one image, which share its
   ReLU pattern; half of them live): the dense product, bags and blocks (``_row_blocks``), which decides
   ``MAX_BAG_ROWS`` and ``MAX_SHARED_ROWS``;
3. independent: 2 to 128 gradient rows of independent patterns (a batch of images, half live each);
4. union: 2, 4, 8 and 32 gradient rows sharing one pattern with 30 to 90 % live (where blocks and bags stop
   paying).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics

import torch
from common import timings

from campp_cli.models.fast import sparse_linear as sl

SHAPES = {"fc6": (4096, 25088), "fc7": (4096, 4096)}


def _ms(fn, repeats: int) -> float:
    return round(statistics.median(timings(fn, repeats)) * 1000, 2)


def _paths(g: torch.Tensor, weight: torch.Tensor, repeats: int, which=("dense", "bags", "blocks")) -> dict:
    nonzero = g != 0
    nnz = int(nonzero.sum())
    live = nonzero.any(dim=0).nonzero()[:, 0]
    fns = {"dense": lambda: g @ weight,
           "bags": lambda: sl._row_bags(g, weight, nonzero, nnz),
           "blocks": lambda: sl._row_blocks(g, weight, live)}
    expected = g.double() @ weight.double()
    for name in which:  # every path gives the product before it is timed
        assert torch.allclose(fns[name]().double(), expected, rtol=1e-4, atol=1e-4), name
    return {name: _ms(fns[name], repeats) for name in which}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    gen = torch.Generator().manual_seed(0)
    found = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                         "torch": torch.__version__}}
    for layer, (out_features, in_features) in SHAPES.items():
        weight = torch.randn(out_features, in_features, generator=gen) * 0.01
        share = {}
        for percent in (10, 30, 50, 60, 70, 80, 90):
            mask = torch.rand(out_features, generator=gen) < percent / 100
            g = torch.randn(1, out_features, generator=gen) * mask
            share[f"{percent}%"] = _paths(g, weight, args.repeats, ("dense", "bags"))
        shared = {}
        mask = torch.rand(out_features, generator=gen) < 0.5
        for rows in (1, 2, 3, 4, 6, 8, 16, 32, 64):
            g = torch.randn(rows, out_features, generator=gen) * mask
            shared[rows] = _paths(g, weight, args.repeats)
        independent = {}
        for rows in (2, 4, 8, 16, 32, 64, 128):
            g = torch.randn(rows, out_features, generator=gen) * (torch.rand(rows, out_features, generator=gen) < 0.5)
            independent[rows] = _paths(g, weight, args.repeats)
        union = {}
        for rows in (2, 4, 8, 32):
            for percent in (30, 50, 70, 90):
                mask = torch.rand(out_features, generator=gen) < percent / 100
                g = torch.randn(rows, out_features, generator=gen) * mask
                union[f"{rows} rows {percent}%"] = _paths(g, weight, args.repeats)
        found[layer] = {"one_row_share_ms": share, "shared_pattern_rows_ms": shared,
                        "independent_rows_ms": independent, "shared_pattern_share_ms": union}
    print(json.dumps(found, indent=1))


if __name__ == "__main__":
    main()
