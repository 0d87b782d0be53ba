"""A batch that does not fit in memory (issue 27's part 4, simulated on the CPU): one line naming --batch-size
with a smaller one to try, exit 1, never a traceback; the sets written before it stay complete."""

from __future__ import annotations

import pytest
import torch
from conftest import POOLED_NET, write_image


@pytest.fixture()
def photos(tmp_path, monkeypatch):
    (tmp_path / "net.py").write_text(POOLED_NET)
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(6):
        write_image(folder / f"p{i}.png", 40, 30, seed=i)
    monkeypatch.chdir(tmp_path)
    return folder


def _failing_after(monkeypatch, batches: int, error: BaseException):
    """explain() works for ``batches`` batches, then raises ``error`` (what CUDA or the allocator raise)."""
    import campp_cli.cam.explain as module

    real, seen = module.explain, []

    def explain(*args, **kwargs):
        seen.append(len(args[2]))
        if len(seen) > batches:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "explain", explain)
    return seen


@pytest.mark.parametrize("error", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total capacity)"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:118] DefaultCPUAllocator: can't allocate memory: you tried to "
                 "allocate 822083584 bytes."),
    MemoryError(),
])
def test_a_batch_out_of_memory_is_one_line_naming_the_batch_size(photos, run_cli, monkeypatch, error):
    seen = _failing_after(monkeypatch, 1, error)
    code, out, err = run_cli("classify", "--model", "net.py:build", "--input-size", "32", "-f", photos,
                             "--batch-size", "4", "--workers", "1", "-gpu", "-1", "--output-dir", "o")
    assert code == 1 and seen == [4, 2]
    line = err.strip().splitlines()[-1]
    assert line == ("campp: error: --batch-size: the machine (cpu) ran out of memory for a batch of 2 images of "
                    "net.py:build at 32x32; try a smaller one, such as 1")
    assert "Traceback" not in err and "alloc_cpu" not in err and "GiB" not in err
    # what was written is of the first batch only, whole sets (the stop cancels sets not yet begun)
    written = [p.name for p in (photos.parent / "o").iterdir()]
    stems = {name.split("_")[0].split(".")[0] for name in written}
    assert stems <= {"p0", "p1", "p2", "p3"}
    assert all(sum(n.startswith(stem + "_") or n == stem + ".jpeg" for n in written) == 5 for stem in stems)


def test_one_image_out_of_memory_says_what_may_fit_it(photos, run_cli, monkeypatch):
    _failing_after(monkeypatch, 0, torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB"))
    code, out, err = run_cli("classify", "--model", "net.py:build", "--input-size", "32", "-f", photos / "p0.png",
                             "-gpu", "-1", "--output-dir", "o")
    assert code == 1
    assert err.strip().splitlines()[-1] == ("campp: error: the machine (cpu) ran out of memory for one image of "
                                            "net.py:build at 32x32; a smaller --input-size or another device may "
                                            "fit it")


def test_other_runtime_errors_are_not_taken_for_memory(photos, run_cli, monkeypatch):
    _failing_after(monkeypatch, 0, RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    code, out, err = run_cli("classify", "--model", "net.py:build", "--input-size", "32", "-f", photos / "p0.png",
                             "-gpu", "-1", "--output-dir", "o")
    assert code == 1 and "--batch-size" not in err and "ran out of memory" not in err
