"""How long naming the outputs takes when every input has the same name (issue 24, defect 13).

    python benchmarks/naming.py --inputs 2000 4000 8000 16000

For N inputs ``dK/x.png`` given in one @list (the files need not exist to be named), prints the seconds
:func:`campp_cli.io.inputs.plan` takes and how many names it tried (calls of ``output_stem``): one per input
and a few more, where it used to try x, x_2, x_3, ... from the start for every input (N^2 / 2 tries).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from campp_cli.io import inputs, names  # noqa: E402
from campp_cli.outputs.kinds import keys as output_keys  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, nargs="+", default=[2000, 4000, 8000])
    args = parser.parse_args()
    real = names.output_stem
    tries = [0]

    def counted(*a, **k):
        tries[0] += 1
        return real(*a, **k)

    names.output_stem = counted
    keys = output_keys(["gradcam", "gradcampp"])
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.inputs:
            listing = Path(tmp) / f"list{n}.txt"
            listing.write_text("".join(f"d{i}/x.png\n" for i in range(n)))
            tries[0] = 0
            start = time.perf_counter()
            jobs = inputs.plan([f"@{listing}"], Path(tmp) / "out", None, keys=keys)
            seconds = time.perf_counter() - start
            print(f"{n:7d} inputs named x.png: {seconds:6.2f} s, {tries[0]} names tried, last {jobs[-1].stem}")


if __name__ == "__main__":
    main()
