"""Nothing lost, ever: one regression test per promise of the reliability issue (numbered as there)."""

from __future__ import annotations

import io
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import IMAGES, REPO, fresh_campp, write_image
from PIL import Image

from campp_cli.errors import InputError, OutputError, WeightsError
from campp_cli.io import decode, durable, formats, tempfiles

LITE = ["--arch", "efficientnet_lite0"]
SET = ["", "_gradcam_heatmap", "_gradcam_overlay", "_gradcampp_heatmap", "_gradcampp_overlay"]


def _tree(root: Path, n: int = 3) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        write_image(root / f"p{i}.png", 48, 40, seed=i)
    return root


# --------------------------------------------------------------------------- 1. never overwrite an input


def test_1_output_folder_that_holds_the_inputs(run_cli, tmp_path):
    photos = _tree(tmp_path / "photos")
    rocket = photos / "rocket.jpeg"
    rocket.write_bytes((IMAGES / "rocket.jpg").read_bytes())
    before = rocket.read_bytes()
    code, _, err = run_cli("classify", *LITE, "-f", photos, "--output-dir", photos)
    assert code == 2 and "is the folder given with -f" in err, err
    code, _, err = run_cli("classify", *LITE, "-f", photos / "rocket.jpeg", "-f", photos / "p0.png",
                           "--output-dir", photos)
    assert code == 2 and "would overwrite the input" in err and str(rocket) in err, err
    assert rocket.read_bytes() == before


def test_1_default_output_of_a_photo_in_output(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "output").mkdir()
    photo = tmp_path / "output" / "rocket.jpeg"  # the default figure of a photo is named after it
    photo.write_bytes((IMAGES / "rocket.jpg").read_bytes())
    code, _, err = run_cli("classify", *LITE, "-f", "output/rocket.jpeg")
    assert code == 2 and "would overwrite the input" in err
    assert photo.read_bytes() == (IMAGES / "rocket.jpg").read_bytes()


def test_1_jsonl_and_hard_links_are_compared_by_inode(run_cli, tmp_path):
    photos = _tree(tmp_path / "photos")
    before = (photos / "p0.png").read_bytes()
    code, _, err = run_cli("classify", *LITE, "-f", photos, "--output-dir", tmp_path / "o",
                           "--jsonl", photos / "p0.png")
    assert code == 2 and "--jsonl" in err and (photos / "p0.png").read_bytes() == before
    out = tmp_path / "o2"
    out.mkdir()
    os.link(photos / "p1.png", out / "p1_gradcam_heatmap.jpeg")  # the same file under an output's name
    code, _, err = run_cli("classify", *LITE, "-f", photos, "--output-dir", out)
    assert code == 2 and "would overwrite the input" in err and str(photos / "p1.png") in err
    listing = tmp_path / "list.txt"
    listing.write_text(f"{photos / 'p2.png'}\n")
    code, _, err = run_cli("classify", *LITE, "-f", f"@{listing}", "--output-dir", tmp_path / "o3", "--jsonl", listing)
    assert code == 2 and listing.read_text().strip() == str(photos / "p2.png")


def test_1_evaluate_outputs_never_replace_inputs(run_cli, tmp_path):
    photos = _tree(tmp_path / "photos", 1)
    code, _, err = run_cli("evaluate", *LITE, "-f", photos, "--csv", photos / "p0.png", "--steps", "2")
    assert code == 2 and "--csv" in err and Image.open(photos / "p0.png").format == "PNG"


# --------------------------------------------------------------------------- 2. a set is all or nothing


def test_2_recovery_removes_half_renamed_sets_and_stale_temporaries(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    (tmp_path / "a.jpeg").write_bytes(b"\xff\xd8 whole \xff\xd9")
    (tmp_path / "a_gradcam_heatmap.jpeg").write_bytes(b"\xff\xd8 whole \xff\xd9")
    (tmp_path / "keep.jpeg").write_bytes(b"\xff\xd8 another set \xff\xd9")
    journal = tmp_path / f".campp-{dead}-pending-0123456789abcdef.json"
    journal.write_text(json.dumps(["a.jpeg", "a_gradcam_heatmap.jpeg", "a_gradcam_overlay.jpeg"]))
    (tmp_path / f".campp-{dead}-0123456789abcdef-2.part").write_bytes(b"half")
    mine = tmp_path / tempfiles.temp_name("fedcba9876543210-0.part")  # a live writer's (locked): left alone
    fd = tempfiles.create_locked(mine)
    os.write(fd, b"in flight")
    try:
        assert durable.recover(tmp_path) == 4
    finally:
        os.close(fd)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["keep.jpeg", mine.name])


def test_2_a_failed_rename_leaves_no_part_of_the_set(tmp_path, monkeypatch):
    real = os.replace
    calls = {"n": 0}

    def flaky(src, dst):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(5, "Input/output error")
        return real(src, dst)

    monkeypatch.setattr(durable.os, "replace", flaky)
    files = {tmp_path / f"x{k}.jpeg": b"\xff\xd8 data \xff\xd9" for k in range(5)}
    with pytest.raises(Exception, match="Input/output error"):
        durable.write_all_atomic(files, source="in.png")
    assert list(tmp_path.iterdir()) == []


#: The start of every script below: a tiny seeded classifier, campp's pipeline at hand.
TINY_RUN = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import torch
    from campp_cli.run.engines.local import run
    from campp_cli.run.options import Options
    from campp_cli.models.loading import Classifier
    from campp_cli.models.preprocessing import Preprocessing
    from campp_cli.io.inputs import plan

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=2, padding=1), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 10))
    clf = Classifier("tiny", net.eval(), "1", Preprocessing(), [str(i) for i in range(10)],
                     torch.device("cpu"), input_size=32)
""")

KILLABLE_RUN = TINY_RUN + textwrap.dedent("""
    src, out, skip = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1"
    summary = run(plan([str(src)], out, None), clf, Options(batch_size=2, workers=1, max_side=48,
                  skip_existing=skip))
    print(summary.done, summary.skipped)
""")


@pytest.mark.slow
def test_2_sigkill_at_every_rename(tmp_path):
    """The attack harness: a run killed at its k-th rename, for every k, then resumed."""
    src = _tree(tmp_path / "src", 3)
    stems = ["p0", "p1", "p2"]
    renames = 3 * len(SET)
    for k in range(1, renames + 1):
        out = tmp_path / f"out{k}"
        env = dict(os.environ, CAMPP_TEST_KILL_AT_RENAME=str(k))
        proc = subprocess.run([sys.executable, "-c", KILLABLE_RUN, src, out, "0"], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == -signal.SIGKILL, (k, proc.stderr)
        durable.recover(out)  # what the next run does first
        complete = []
        for stem in stems:
            present = [s for s in SET if (out / f"{stem}{s}.jpeg").exists()]
            assert present in ([], SET), (k, stem, present)  # whole sets or nothing
            if present:
                assert all(formats.is_complete(out / f"{stem}{s}.jpeg") for s in SET)
                complete.append(stem)
        assert not [p for p in out.iterdir() if p.name.startswith(".campp-")], k
        proc = subprocess.run([sys.executable, "-c", KILLABLE_RUN, src, out, "1"], cwd=REPO, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == [str(3 - len(complete)), str(len(complete))], (k, proc.stdout)
        assert sorted(p.name for p in out.iterdir()) == sorted(f"{s}{x}.jpeg" for s in stems for x in SET)


def test_2_sigterm_is_an_abort_with_consistent_files(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(60):
        write_image(src / f"{i:02d}.png", 64, 64, seed=i)
    out, log = tmp_path / "o", tmp_path / "run.jsonl"
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.Popen([sys.executable, "-m", "campp_cli", "classify", *LITE, "-f", src, "--output-dir", out,
                             "--jsonl", log, "--batch-size", "2"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1].startswith("campp: aborted")
    done = [json.loads(line) for line in log.read_text().splitlines()]
    on_disk = sorted(p.name for p in out.glob("*.jpeg") if not p.stem.endswith(("heatmap", "overlay")))
    assert sorted(Path(d["outputs"][0]).name for d in done) == on_disk  # the log matches the disk
    for d in done:
        assert all(formats.is_complete(p) for p in d["outputs"])
    assert not list(out.glob(".campp-*"))



@pytest.mark.parametrize("window", ["a set's writing has just begun", "a finished set is taken to be reported"])
def test_2_a_stop_in_the_engines_gaps_still_reports_every_set_it_wrote(tmp_path, monkeypatch, window):
    """A stop that falls between two steps of the engine's bookkeeping (a CI run once caught one between
    the finishers' submit and the pending queue): every set on disk is still reported, and only those."""
    from collections import deque

    from campp_cli.io.inputs import plan
    from campp_cli.models.loading import Classifier
    from campp_cli.models.preprocessing import Preprocessing
    from campp_cli.run.engines import local
    from campp_cli.run.options import Options
    from campp_cli.run.signals import deferrable

    src = _tree(tmp_path / "src", 6)
    out = tmp_path / "o"
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=2, padding=1), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 10))
    clf = Classifier("tiny", net.eval(), "1", Preprocessing(), [str(i) for i in range(10)],
                     torch.device("cpu"), input_size=32)
    stop = {"armed": True}

    def ctrl_c_now():  # the signal arrives at this very point, in the main thread
        if stop.pop("armed", False):
            signal.raise_signal(signal.SIGINT)

    class Executor(local.ThreadPoolExecutor):
        def submit(self, *args, **kwargs):
            future = super().submit(*args, **kwargs)
            if window.startswith("a set's") and self._thread_name_prefix == "campp-finish":
                ctrl_c_now()
            return future

    class Pending(deque):
        def popleft(self):
            item = super().popleft()
            if window.startswith("a finished"):
                ctrl_c_now()
            return item

    monkeypatch.setattr(local, "ThreadPoolExecutor", Executor)
    monkeypatch.setattr(local, "deque", Pending)
    previous = signal.signal(signal.SIGINT, deferrable(signal.default_int_handler))
    reported = []
    try:
        with pytest.raises(KeyboardInterrupt):
            local.run(plan([str(src)], out, None), clf, Options(batch_size=2, workers=1, max_side=48),
                      on_result=reported.append)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert "armed" not in stop  # the stop did come
    on_disk = sorted(p.name for p in out.glob("*.jpeg") if p.stem.startswith("p") and "_" not in p.stem)
    assert on_disk, "the stop came before anything was written: the test tests nothing"
    assert sorted(Path(r.outputs[0]).name for r in reported) == on_disk


# --------------------------------------------------------------------------- 3. re-runs never explain their outputs


def test_3_output_folder_inside_the_input_folder(run_cli, tmp_path):
    photos = _tree(tmp_path / "photos", 2)
    args = ["classify", *LITE, "-f", photos, "--recursive", "--output-dir", photos / "explained"]
    for _ in range(3):
        code, _, err = run_cli(*args)
        assert code == 0 and "2 done" in err, err
    assert len(list((photos / "explained").rglob("*.jpeg"))) == 10


# ---------------------------------------------------------------- 4. --skip-existing trusts complete files only


def test_4_empty_and_truncated_outputs_are_redone(run_cli, tmp_path):
    photos = _tree(tmp_path / "photos", 3)
    out = tmp_path / "o"
    args = ["classify", *LITE, "-f", photos, "--output-dir", out, "--skip-existing", "--save-maps"]
    assert run_cli(*args)[0] == 0
    (out / "p0_gradcam_overlay.jpeg").write_bytes(b"")
    whole = (out / "p1.jpeg").read_bytes()
    (out / "p1.jpeg").write_bytes(whole[: len(whole) // 2])
    npy = (out / "p2_gradcampp.npy").read_bytes()
    (out / "p2_gradcampp.npy").write_bytes(npy[:-8])
    code, _, err = run_cli(*args)
    assert code == 0 and "3 done, 0 skipped" in err, err
    assert formats.is_complete(out / "p1.jpeg") and np.load(out / "p2_gradcampp.npy").shape == (7, 7)


# --------------------------------------------------------------------------- 5. JSONL is never torn


def test_5_a_jsonl_in_use_is_refused(run_cli, tmp_path):
    import fcntl

    photos = _tree(tmp_path / "photos", 1)
    log = tmp_path / "run.jsonl"
    with open(log, "a") as holder:  # another campp run holding it
        fcntl.flock(holder, fcntl.LOCK_EX)
        code, _, err = run_cli("classify", *LITE, "-f", photos, "--output-dir", tmp_path / "o", "--jsonl", log)
    assert code == 2 and "in use by another campp run" in err
    code, _, err = run_cli("classify", *LITE, "-f", photos, "--output-dir", tmp_path / "o", "--jsonl", log)
    assert code == 0 and len(log.read_text().splitlines()) == 1


# --------------------------------------------------------------------------- 6, 8, 11. names


def test_6_odd_stems_never_end_a_folder_run(run_cli, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a..png", "back\\slash.png", "..hidden.png", "trail..png", "ok.png"):
        write_image(photos / name, 40, 40)
    code, _, err = run_cli("classify", *LITE, "-f", photos, "--output-dir", tmp_path / "o")
    assert code == 0 and "5 done" in err, err
    assert len(list((tmp_path / "o").glob("*.jpeg"))) == 25


def test_8_names_are_unique_across_every_file(run_cli, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("b.png", "b_gradcam_heatmap.png", "b_gradcam.png", "c.png"):
        write_image(photos / name, 40, 40)
    code, _, err = run_cli("classify", *LITE, "-f", photos, "--output-dir", tmp_path / "o", "--save-maps",
                           "--jsonl", tmp_path / "r.jsonl")
    assert code == 0, err
    outputs = [p for line in (tmp_path / "r.jsonl").read_text().splitlines() for p in json.loads(line)["outputs"]]
    assert len(outputs) == 4 * 7 and len(set(outputs)) == len(outputs)
    assert len(list((tmp_path / "o").iterdir())) == 28


@pytest.mark.parametrize("template", ["{{stem}}.jpeg", "{}.jpeg", "{0}.jpeg", "{stem.x}.jpeg"])
def test_8_template_without_a_real_stem_is_refused(run_cli, tmp_path, template):
    photos = _tree(tmp_path / "photos", 2)
    code, _, err = run_cli("classify", *LITE, "-f", photos, "-o", template, "--output-dir", tmp_path / "o")
    assert code == 2 and len(err.strip().splitlines()) == 1, err


def test_11_long_names_keep_short_temporaries(run_cli, tmp_path):
    name = "a" * 225 + ".jpeg"
    code, _, err = run_cli("classify", *LITE, "-f", IMAGES / "coffee.png", "-o", name, "--output-dir", tmp_path)
    assert code == 0, err
    assert (tmp_path / name).is_file() and (tmp_path / ("a" * 225 + "_gradcampp_overlay.jpeg")).is_file()


# --------------------------------------------------------------------------- 7, 18, 19, 20. resources


def test_7_a_huge_file_fails_alone_before_being_read(run_cli, tmp_path):
    photos = _tree(tmp_path / "photos", 2)
    with open(photos / "huge.png", "wb") as fh:  # sparse: 30 GB on paper, nothing on disk
        fh.write(b"\x89PNG\r\n\x1a\n")
        fh.truncate(30 * 1024 ** 3)
    start = time.perf_counter()
    code, _, err = run_cli("classify", *LITE, "-f", photos, "--output-dir", tmp_path / "o")
    assert code == 1 and f"{photos / 'huge.png'}: refused: 32.2 GB" in err, err
    assert "2 done, 0 skipped, 1 failed" in err and time.perf_counter() - start < 60


def _ico_claiming_16px(png: bytes) -> bytes:
    header = struct.pack("<HHH", 0, 1, 1)
    entry = struct.pack("<BBBBHHII", 16, 16, 0, 0, 1, 32, len(png), 6 + 16)
    return header + entry + png


def test_18_icon_whose_frame_is_a_bomb(tmp_path):
    ihdr = struct.pack(">IIBBBBB", 13000, 13000, 8, 6, 0, 0, 0)
    chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data  # noqa: E731
                                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
           + chunk(b"IEND", b""))
    path = tmp_path / "bomb.ico"
    path.write_bytes(_ico_claiming_16px(png))
    start = time.perf_counter()
    with pytest.raises(InputError, match="13000x13000"):
        decode.load_rgb(path)
    assert time.perf_counter() - start < 1.0
    small = io.BytesIO()
    Image.new("RGBA", (16, 16), (255, 0, 0, 255)).save(small, "PNG")
    (tmp_path / "fine.ico").write_bytes(_ico_claiming_16px(small.getvalue()))
    assert decode.load_rgb(tmp_path / "fine.ico").shape == (16, 16, 3)


def test_19_large_images_are_converted_in_strips_at_full_resolution(tmp_path, monkeypatch):
    """A large RGBA photo is decoded whole (the model's input never depends on a reduced decode) and
    composited on white strip by strip: no whole-image RGBA copy besides the decoded one."""
    Image.new("RGBA", (4000, 3000), (0, 128, 0, 255)).save(tmp_path / "big.png")
    real = Image.alpha_composite
    sizes = []

    def spy(a, b):
        sizes.append(a.size)
        return real(a, b)

    monkeypatch.setattr(Image, "alpha_composite", spy)
    rgb = decode.load_rgb(tmp_path / "big.png")
    assert rgb.shape == (3000, 4000, 3) and (rgb[..., 1] == 128).all() and (rgb[..., 0] == 0).all()
    assert sizes and max(w * h for w, h in sizes) <= 4000 * 256


def test_19_the_pixel_budget_waits(tmp_path):
    budget = decode.PixelBudget(100)
    order = []
    import threading

    def hold(tag, n, pause):
        with budget.hold(n):
            order.append((tag, budget.used))
            time.sleep(pause)

    threads = [threading.Thread(target=hold, args=("a", 80, 0.2)), threading.Thread(target=hold, args=("b", 80, 0))]
    threads[0].start()
    time.sleep(0.05)
    threads[1].start()
    for t in threads:
        t.join()
    assert order == [("a", 80), ("b", 80)]  # b waited for a: never 160 pixels at once


MEMORY_PROBE = TINY_RUN + textwrap.dedent("""
    results = []
    run(plan([sys.argv[1]], Path(sys.argv[2]), None), clf, Options(workers=4), results.append)
    assert all(r.error is None for r in results), [r.error for r in results]
    # VmHWM is this process's own peak; ru_maxrss would include the parent's RSS before exec.
    status = Path("/proc/self/status").read_text()
    print(int(next(l for l in status.splitlines() if l.startswith("VmHWM")).split()[1]) / 1024)
""")


@pytest.mark.slow
def test_19_four_10000px_rgba_pngs_with_four_workers(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    Image.new("RGBA", (10000, 10000), (30, 60, 90, 200)).save(src / "a.png", compress_level=1)
    for k in "bcd":
        (src / f"{k}.png").write_bytes((src / "a.png").read_bytes())
    proc = subprocess.run([sys.executable, "-c", MEMORY_PROBE, src, tmp_path / "out"], capture_output=True,
                          text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr
    peak = float(proc.stdout.split()[-1])
    with capsys.disabled():
        print(f"\n[memory] four 10000x10000 RGBA PNGs, --workers 4: peak RSS {peak:.0f} MB")
    assert peak < 1700  # measured 1.3 GB; before this issue, 10.8 GB


@pytest.mark.slow
def test_20_a_checkpoint_that_inflates_is_refused_from_its_directory(tmp_path):
    import torchvision

    from campp_cli.models.loading import load_classifier

    state = torchvision.models.resnet18().state_dict()
    state["fc.weight"] = torch.zeros(1000, 300_000)  # 1.2 GB of zeros
    plain = tmp_path / "plain.pth"
    torch.save(state, plain)
    bomb = tmp_path / "bomb.pth"
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    plain.unlink()
    assert bomb.stat().st_size < 60_000_000  # resnet18's own random weights are most of it
    with pytest.raises(WeightsError, match="MB once read"):
        load_classifier("resnet18", weights=bomb)


# --------------------------------------------------------------------------- 9, 10. links


def test_9_symlink_loops_are_walked_once(run_cli, tmp_path):
    photos = _tree(tmp_path / "photos", 2)
    (photos / "sub").mkdir()
    write_image(photos / "sub" / "s.png", 40, 40)
    os.symlink(photos, photos / "sub" / "back")  # a loop
    os.symlink(photos / "sub", photos / "again")  # a second way in
    code, _, err = run_cli("classify", *LITE, "-f", photos, "--recursive", "--output-dir", tmp_path / "o")
    assert code == 0 and "3 done" in err, err
    code, _, err = run_cli("classify", *LITE, "-f", f"{photos}/**/*.png", "--output-dir", tmp_path / "g")
    assert code == 0 and "3 done" in err, err


def test_10_never_writes_through_a_link_in_the_output_folder(run_cli, tmp_path):
    photos = _tree(tmp_path / "photos", 1)
    (photos / "sub").mkdir()
    write_image(photos / "sub" / "x.png", 40, 40)
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "o"
    out.mkdir()
    os.symlink(outside, out / "sub")
    code, _, err = run_cli("classify", *LITE, "-f", photos, "--recursive", "--output-dir", out)
    assert code == 1 and "symbolic link" in err and str(photos / "sub" / "x.png") in err, err
    assert list(outside.iterdir()) == [] and (out / "p0.jpeg").is_file()


# --------------------------------------------------------------------------- 12, 13, 14. streams and messages


def _campp(args, cwd, env=None, shell_suffix=""):
    cmd = " ".join(f"'{a}'" for a in [sys.executable, "-m", "campp_cli", *map(str, args)]) + shell_suffix
    return subprocess.run(["bash", "-c", cmd], capture_output=True, cwd=cwd, timeout=300,
                          env=dict(os.environ, PYTHONWARNINGS="ignore", **(env or {})))


def test_12_names_that_are_not_text_or_hold_newlines(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    write_image(photos / "ok.png", 40, 40)
    write_image(Path(os.fsdecode(bytes(photos) + b"/caf\xe9.png")), 40, 40)
    (photos / "forged\ncampp: error: x.png").write_bytes(b"not an image")
    log = tmp_path / "r.jsonl"
    proc = _campp(["classify", *LITE, "-f", photos, "--output-dir", tmp_path / "o", "--jsonl", log], REPO,
                  env={"PYTHONIOENCODING": "ascii:strict"})
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr.decode("ascii")
    errors = [line for line in err.splitlines() if line.startswith("campp: error:")]
    assert len(errors) == 1 and "forged\\ncampp" in errors[0]
    assert "caf\\udce9" in proc.stdout.decode("ascii")
    inputs = [json.loads(line)["input"] for line in log.read_text(encoding="ascii").splitlines()]
    assert sorted(Path(i).name for i in inputs) == sorted(["caf\udce9.png", "forged\ncampp: error: x.png", "ok.png"])


@pytest.mark.slow
def test_13_closed_and_full_streams(tmp_path):
    photos = _tree(tmp_path / "photos", 2)
    proc = _campp(["classify", *LITE, "-f", photos, "--output-dir", tmp_path / "a"], REPO, shell_suffix=" 2>&-")
    assert proc.returncode == 0 and len(list((tmp_path / "a").glob("*.jpeg"))) == 10
    proc = _campp(["classify", *LITE, "-f", photos, "--output-dir", tmp_path / "b"], REPO, shell_suffix=" >&-")
    assert proc.returncode == 1 and b"stdout" in proc.stderr and b"Traceback" not in proc.stderr
    proc = _campp(["classify", *LITE, "-f", photos, "--output-dir", tmp_path / "c"], REPO,
                  shell_suffix=" > /dev/full")
    lines = proc.stderr.decode().strip().splitlines()
    assert proc.returncode == 1 and "stdout: cannot write (No space left on device)" in lines[-1], lines
    proc = _campp(["classify", *LITE, "-f", photos, "--output-dir", tmp_path / "d", "--jsonl", "/dev/full"], REPO)
    lines = proc.stderr.decode().strip().splitlines()
    assert proc.returncode == 1 and "--jsonl /dev/full: cannot write" in lines[-1], lines
    for folder in "bcd":  # whatever was written is whole
        assert all(formats.is_complete(p) for p in (tmp_path / folder).glob("*.jpeg"))


def test_14_library_chatter_is_silenced(tmp_path):
    """A deflate TIFF whose strip checksum is wrong: libtiff prints "ZIPDecode: ..." to descriptor 2."""
    photos = _tree(tmp_path / "photos", 1)
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 24, 3), dtype=np.uint8)).save(
        buf, "TIFF", compression="tiff_deflate")
    data = bytearray(buf.getvalue())
    with Image.open(io.BytesIO(bytes(data))) as im:
        end = im.tag_v2[273][0] + im.tag_v2[279][0]  # the strip's end: its Adler-32 checksum
    data[end - 1] ^= 0xFF
    (photos / "noisy.tif").write_bytes(bytes(data))
    proc = _campp(["classify", *LITE, "-f", photos, "--output-dir", tmp_path / "o"], REPO)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "noisy.tif" in err, err
    assert all(line.startswith("campp:") for line in err.strip().splitlines()), err
    proc = _campp(["--debug", "classify", *LITE, "-f", photos, "--output-dir", tmp_path / "d"], REPO)
    assert "ZIPDecode" in proc.stderr.decode()  # --debug shows it: the file really makes libtiff speak


def test_15_malformed_inputs_are_refused_cleanly(run_cli, tmp_path):
    import torchvision

    state = torchvision.models.resnet18().state_dict()
    two = tmp_path / "two_means.pth"
    torch.save({"state_dict": state, "preprocessing": {"mean": [0.5, 0.5], "std": [1, 1, 1], "scale": 1.0,
                                                       "bgr": False}}, two)
    code, _, err = run_cli("classify", "--arch", "resnet18", "--weights", two, "-f", IMAGES / "coffee.png",
                           "--output-dir", tmp_path / "o")
    assert code == 1 and "3 values" in err and "internal error" not in err, err
    sparse = dict(state)
    sparse["fc.weight"] = state["fc.weight"].to_sparse()
    torch.save(sparse, tmp_path / "sparse.pth")
    code, _, err = run_cli("classify", "--arch", "resnet18", "--weights", tmp_path / "sparse.pth",
                           "-f", IMAGES / "coffee.png", "--output-dir", tmp_path / "o")
    assert code == 1 and "dense" in err and "internal error" not in err, err
    listing = tmp_path / "self.txt"
    listing.write_text(f"@{listing}\n")
    code, _, err = run_cli("classify", "-f", f"@{listing}", "--output-dir", tmp_path / "o")
    assert code == 2 and "names itself" in err


def test_15_npy_with_an_empty_fc6(tmp_path):
    from campp_cli.models.npy import CONV_LAYERS, load_npy_weights

    layers = {n: [np.zeros((3, 3, 3, 3), np.float32), np.zeros(3, np.float32)] for n in CONV_LAYERS}
    layers["fc6"] = [np.zeros((25088, 0), np.float32), np.zeros(0, np.float32)]
    layers["fc7"] = [np.zeros((4096, 4096), np.float32), np.zeros(4096, np.float32)]
    layers["fc8"] = [np.zeros((4096, 1000), np.float32), np.zeros(1000, np.float32)]
    path = tmp_path / "vgg16.npy"
    np.save(path, np.array(layers, dtype=object), allow_pickle=True)
    with pytest.raises(WeightsError, match="fc6"):
        load_npy_weights(path)


def test_16_arguments_are_checked_before_torch_loads(tmp_path):
    code, loaded, err = fresh_campp(["classify", "-f", "@-"], tmp_path, stdin="")
    assert (code, loaded) == (2, False) and "no input files" in err
    code, loaded, err = fresh_campp(["classify", "-f", IMAGES, "--jsonl", tmp_path / "missing" / "r.jsonl",
                                       "--output-dir", tmp_path / "o"], tmp_path)
    assert (code, loaded) == (2, False) and "does not exist" in err and not (tmp_path / "o").exists()
    code, loaded, err = fresh_campp(["classify", "-f", IMAGES / "coffee.png", "-o", "sub/x.jpeg"], tmp_path)
    assert (code, loaded) == (2, False) and "without folders" in err


def test_17_errors_name_the_input_and_the_weights(vgg, run_cli, tmp_path, monkeypatch):
    import torchvision

    real = os.replace

    def full(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(durable.os, "replace", full)
    code, _, err = run_cli("classify", "-f", IMAGES / "coffee.png", "--output-dir", tmp_path / "o")
    monkeypatch.setattr(durable.os, "replace", real)
    assert code == 1 and str(IMAGES / "coffee.png") in err and "coffee.jpeg" in err, err
    state = torchvision.models.vgg16().state_dict()
    state["classifier.6.bias"][:] = float("nan")
    torch.save(state, tmp_path / "nan.pth")
    code, _, err = run_cli("classify", "-f", IMAGES / "coffee.png", "--weights", tmp_path / "nan.pth",
                           "--output-dir", tmp_path / "p")
    assert code == 1 and "non-finite" in err and str(tmp_path / "nan.pth") in err


# --------------------------------------------------------------------------- the fuzz run


FUZZ_RUN = TINY_RUN + textwrap.dedent("""
    out = []
    run(plan([sys.argv[1]], Path(sys.argv[2]), None), clf, Options(max_side=48, max_pixels=4_000_000),
        lambda r: out.append({"input": r.input, "error": r.error, "outputs": r.outputs}))
    print(json.dumps(out))
""")


@pytest.mark.slow
def test_fuzz_2000_mutated_files_in_one_run(tmp_path):
    from test_hostile import SEEDS

    rng = np.random.default_rng(2026)
    src = tmp_path / "fuzz"
    src.mkdir()
    exts = [".png", ".jpg", ".gif", ".bmp", ".webp", ".tif"]
    for i in range(2000):
        k = int(rng.integers(len(SEEDS)))
        data = bytearray(SEEDS[k])
        for _ in range(int(rng.integers(0, 9))):
            pos = int(rng.integers(0, max(1, len(data))))
            op = rng.integers(3)
            if op == 0 and data:
                data[pos] = int(rng.integers(256))
            elif op == 1:
                del data[pos:pos + int(rng.integers(1, 65))]
            else:
                data[pos:pos] = rng.bytes(int(rng.integers(1, 17)))
        (src / f"f{i:04d}{exts[k]}").write_bytes(bytes(data))
    proc = subprocess.run([sys.executable, "-c", FUZZ_RUN, src, tmp_path / "out"], capture_output=True, text=True,
                          cwd=REPO, timeout=900)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    results = json.loads(proc.stdout)
    assert len(results) == 2000
    for r in results:
        if r["error"] is not None:
            assert r["error"].startswith(r["input"] + ": ") and "\n" not in r["error"]
        else:
            assert len(r["outputs"]) == 5 and all(formats.is_complete(p) for p in r["outputs"])
    failed = sum(r["error"] is not None for r in results)
    print(f"\n[fuzz] 2000 mutated files: {2000 - failed} explained, {failed} refused, each naming its file")


# ============================================================ issue 24: a second attack on "Nothing lost"

LABELLED_RUN = TINY_RUN + textwrap.dedent("""
    src, out, skip, label = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1", int(sys.argv[4])
    summary = run(plan([str(src)], out, None), clf, Options(batch_size=2, workers=1, max_side=48,
                  skip_existing=skip, label=label))
    print(summary.done, summary.skipped)
""")


def _labelled_run(src, out, skip, label, prefix=(), kill_at=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    if kill_at is not None:
        env["CAMPP_TEST_KILL_AT_RENAME"] = str(kill_at)
    return subprocess.run([*prefix, sys.executable, "-c", LABELLED_RUN, src, out, "1" if skip else "0", str(label)],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=120)


def _mixed_set_attack(tmp_path, prefix=(), rename_leftovers=None):
    """Run A writes every set; run B (another -l) is killed at its 3rd rename, in the middle of p0's set;
    run C resumes with --skip-existing.  Returns (A's files, the folder after C, C's output)."""
    src = _tree(tmp_path / "src", 2)
    out = tmp_path / "out"
    first = _labelled_run(src, out, False, -1, prefix)
    assert first.returncode == 0, first.stderr
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    killed = _labelled_run(src, out, False, 7, prefix, kill_at=3)
    assert killed.returncode in (-signal.SIGKILL, 128 + signal.SIGKILL), killed.stderr
    assert (out / "p0.jpeg").read_bytes() != before["p0.jpeg"]  # the attack worked: p0's set is mixed
    assert [p for p in out.iterdir() if p.name.startswith(".campp-")]
    if rename_leftovers is not None:
        rename_leftovers(out)
    resumed = _labelled_run(src, out, True, -1, prefix)
    assert resumed.returncode == 0, resumed.stderr
    return before, out, resumed.stdout


@pytest.mark.slow
def test_24_1_recovery_does_not_trust_a_reused_process_id(tmp_path):
    """The dead run's temporaries carry the id of a live process (here: this test's own, as after PID reuse):
    they are still the dead run's, and its half set is still removed."""
    def reuse_pid(out):
        for p in out.iterdir():
            if p.name.startswith(".campp-"):
                rest = p.name[len(".campp-"):].split("-", 1)[1]
                p.rename(out / f".campp-{os.getpid()}-{rest}")

    before, out, stdout = _mixed_set_attack(tmp_path, rename_leftovers=reuse_pid)
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after == before, sorted(n for n in after if after.get(n) != before.get(n))  # no mixed set, nothing left
    assert stdout.split() == ["1", "1"]  # p0 redone, p1 skipped


def _unshare_pid() -> list[str] | None:
    try:
        ok = subprocess.run(["unshare", "--pid", "--fork", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return None
    # A shell as the namespace's PID 1 (which ignores even SIGKILL), campp as its child: PID 2 in every run.
    return ["unshare", "--pid", "--fork", "sh", "-c", '"$@"; exit $?', "sh"] if ok else None


@pytest.mark.slow
def test_24_1_three_runs_in_pid_namespaces(tmp_path):
    """The issue's repro: every run is PID 1 in its own PID namespace."""
    prefix = _unshare_pid()
    if prefix is None:
        pytest.skip("unshare --pid --fork is not available here (needs root or user namespaces)")
    before, out, stdout = _mixed_set_attack(tmp_path, prefix)
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after == before, sorted(n for n in after if after.get(n) != before.get(n))
    assert stdout.split() == ["1", "1"]


def test_24_1_a_live_runs_temporaries_are_left_alone_whatever_their_id(tmp_path):
    """A temporary held by a live process (its flock) is not touched, even under a dead process's id."""
    import fcntl

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    held = tmp_path / f".campp-{dead}-0badc0de-0123456789abcdef-0.part"
    held.write_bytes(b"in flight")
    stale = tmp_path / f".campp-{os.getpid()}-0badc0de-fedcba9876543210-0.part"
    stale.write_bytes(b"left by a killed run whose id is now this process's")
    with open(held, "rb+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        assert durable.recover(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == [held.name]


def _device(path: Path, minor: int) -> Path:
    """A character device like /dev/null (minor 3) or /dev/full (7), made in a test folder; skips unless root."""
    try:
        os.mknod(path, 0o666 | __import__("stat").S_IFCHR, os.makedev(1, minor))
    except (PermissionError, AttributeError):
        pytest.skip("making a device node needs root")
    return path


def test_24_2_a_fifo_or_a_device_is_written_into_never_replaced(tmp_path):
    import stat
    import threading

    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    durable.write_atomic(fifo, b'{"a": 1}\n')
    reader.join(timeout=30)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and got == [b'{"a": 1}\n']
    null = _device(tmp_path / "null", 3)
    durable.write_atomic(null, b"discarded")
    assert stat.S_ISCHR(os.lstat(null).st_mode)
    full = _device(tmp_path / "full", 7)
    with pytest.raises(OutputError, match="No space left on device"):
        durable.write_atomic(full, b"x" * 10)
    assert stat.S_ISCHR(os.lstat(full).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "null", "pipe.json"]  # no temporary left


def test_24_2_a_set_never_replaces_a_fifo(tmp_path):
    import stat

    os.mkfifo(tmp_path / "x_gradcam_heatmap.jpeg")
    files = {tmp_path / f"x{s}.jpeg": b"\xff\xd8 data \xff\xd9" for s in ("", "_gradcam_heatmap")}
    with pytest.raises(OutputError, match="x_gradcam_heatmap.jpeg.*not a regular file"):
        durable.write_all_atomic(files, source="x.png")
    assert [p.name for p in tmp_path.iterdir()] == ["x_gradcam_heatmap.jpeg"]
    assert stat.S_ISFIFO(os.lstat(tmp_path / "x_gradcam_heatmap.jpeg").st_mode)


OWN_NET = textwrap.dedent("""
    import torch.nn as nn

    def build():
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
""")


@pytest.fixture()
def own_net(tmp_path):
    (tmp_path / "net.py").write_text(OWN_NET)
    namespace: dict = {}
    exec(OWN_NET, namespace)
    torch.manual_seed(0)
    torch.save(namespace["build"]().state_dict(), tmp_path / "w.pth")
    return tmp_path


def test_24_2_convert_into_a_device(own_net, run_cli, monkeypatch):
    import stat

    monkeypatch.chdir(own_net)
    full = _device(own_net / "full", 7)
    code, _, err = run_cli("convert", "w.pth", full, "--model", "net.py:build")
    assert code == 1 and "No space left on device" in err, err
    assert stat.S_ISCHR(os.lstat(full).st_mode)
    code, _, err = run_cli("convert", "w.pth", "-", "--model", "net.py:build")
    assert code == 2 and "TARGET -" in err and not (own_net / "-").exists()


@pytest.mark.slow
def test_24_2_dev_stdout_and_dev_null_in_a_private_mount_namespace(own_net):
    """The issue's case, on a private /dev (a tmpfs in a mount namespace of its own; the real /dev is never
    touched): outputs named /dev/null and /dev/stdout are written into, and stay a device and a link."""
    try:
        ok = subprocess.run(["unshare", "-m", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    if not ok:
        pytest.skip("unshare -m is not available here (needs root)")
    script = textwrap.dedent(f"""
        set -e
        mount -t tmpfs campp-test-dev /dev
        mknod -m 666 /dev/null c 1 3
        mknod -m 666 /dev/full c 1 7
        mknod -m 666 /dev/urandom c 1 9
        ln -s /proc/self/fd/1 /dev/stdout
        '{sys.executable}' -m campp_cli convert w.pth /dev/null --model net.py:build >/dev/null
        '{sys.executable}' -m campp_cli convert w.pth /dev/stdout --model net.py:build > out.pth
        '{sys.executable}' -m campp_cli convert w.pth /dev/full --model net.py:build || echo "full: $?"
        test -c /dev/null && test -c /dev/full && test -L /dev/stdout && echo intact
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], cwd=own_net, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.split()[-3:] == ["full:", "1", "intact"], (proc.stdout, proc.stderr)
    assert "No space left on device" in proc.stderr
    payload = torch.load(io.BytesIO((own_net / "out.pth").read_bytes().split(b"wrote /dev/stdout")[0]),
                         weights_only=True)
    assert payload["source"] == "w.pth"


def test_24_3_convert_never_overwrites_its_source(own_net, run_cli, monkeypatch):
    monkeypatch.chdir(own_net)
    before = (own_net / "w.pth").read_bytes()
    os.link(own_net / "w.pth", own_net / "hard.pth")
    for target in ("w.pth", "./w.pth", str(own_net / "w.pth"), "hard.pth"):
        code, loaded, err = fresh_campp(["convert", "w.pth", target, "--model", "net.py:build"], own_net)
        assert (code, loaded) == (2, False) and "is the SOURCE" in err, (target, err)
    assert (own_net / "w.pth").read_bytes() == before
    from campp_cli.errors import UsageError
    from campp_cli.models.weights import convert_weights

    with pytest.raises(UsageError, match="is the SOURCE"):
        convert_weights("w.pth", "hard.pth", model="net.py:build")
    assert (own_net / "w.pth").read_bytes() == before


def test_24_4_a_run_that_fails_before_any_work_keeps_the_jsonl(run_cli, tmp_path):
    photos = _tree(tmp_path / "photos", 1)
    log = tmp_path / "r.jsonl"
    log.write_text('{"input": "an earlier run"}\n')
    labels = tmp_path / "three.txt"
    labels.write_text("a\nb\nc\n")
    for bad in (["--layer", "no.such.layer"], ["--labels", labels]):
        code, _, err = run_cli("classify", *LITE, *bad, "-f", photos, "--output-dir", tmp_path / "o", "--jsonl", log)
        assert code == 2 and err.strip(), (bad, err)
        assert log.read_text() == '{"input": "an earlier run"}\n', bad
    fresh = tmp_path / "new.jsonl"
    code, _, _ = run_cli("classify", *LITE, "--layer", "no.such.layer", "-f", photos, "--output-dir", tmp_path / "o",
                         "--jsonl", fresh)
    assert code == 2 and not fresh.exists()  # no empty file left behind either
    code, _, err = run_cli("classify", *LITE, "-f", photos, "--output-dir", tmp_path / "o", "--jsonl", log)
    assert code == 0 and [json.loads(line)["input"] for line in log.read_text().splitlines()] == [
        str(photos / "p0.png")]  # a run that starts replaces it


@pytest.mark.parametrize("how", ["short write", "half, then ENOSPC"])
def test_24_7_a_jsonl_line_is_whole_or_absent_on_a_full_disk(tmp_path, monkeypatch, how):
    from campp_cli.io import jsonl

    log = jsonl.JsonlLog(tmp_path / "r.jsonl")
    log.write({"input": "first.png", "class": 1})
    real = os.write

    def full_disk(fd, data):
        half = real(fd, bytes(data)[: len(data) // 2])
        if how == "short write":
            return half
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(jsonl.os, "write", full_disk)
    with pytest.raises(OutputError, match="^jsonl .*r.jsonl: cannot write \\(No space left on device"):
        log.write({"input": "second.png", "class": 2, "outputs": ["x" * 100]})
    monkeypatch.setattr(jsonl.os, "write", real)
    log.close()
    assert (tmp_path / "r.jsonl").read_text() == '{"input": "first.png", "class": 1}\n'


def test_24_5_the_reports_images_are_never_read_back_as_inputs(run_cli, tmp_path):
    photos = _tree(tmp_path / "ph", 2)
    args = ["classify", *LITE, "-f", photos, "--recursive", "--output-dir", tmp_path / "o",
            "--report", photos / "report.html", "--jsonl", tmp_path / "r.jsonl"]
    for _ in range(2):
        code, _, err = run_cli(*args)
        assert code == 0 and "2 done, 0 skipped, 0 failed" in err, err
    inputs = [json.loads(line)["input"] for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert sorted(inputs) == [str(photos / "p0.png"), str(photos / "p1.png")]
    assert not (tmp_path / "o" / "report_files").exists()


def test_24_5_the_reports_image_folder_is_never_a_link(run_cli, tmp_path):
    photos = _tree(tmp_path / "ph", 1)
    before = sorted(p.name for p in photos.iterdir())
    (tmp_path / "rep").mkdir()
    os.symlink(photos, tmp_path / "rep" / "r_files")  # would put the report's images among the photos
    code, _, err = run_cli("classify", *LITE, "-f", photos, "--output-dir", tmp_path / "o",
                           "--report", tmp_path / "rep" / "r.html")
    assert code == 2 and "symbolic link" in err and "r_files" in err, err
    assert sorted(p.name for p in photos.iterdir()) == before


@pytest.mark.parametrize("case", ["jsonl and report", "jsonl is a figure", "jsonl in the report's folder",
                                  "report's folder holds the figures", "input in the report's folder"])
def test_24_6_outputs_that_collide_are_refused(run_cli, tmp_path, case):
    photos = _tree(tmp_path / "ph", 1)
    write_image(photos / "cat.jpeg", 40, 40, fmt="JPEG")
    out = tmp_path / "o4"
    extra = {
        "jsonl and report": ["--jsonl", tmp_path / "same.html", "--report", tmp_path / "same.html"],
        "jsonl is a figure": ["--jsonl", out / "cat.jpeg"],
        "jsonl in the report's folder": ["--report", tmp_path / "r.html", "--jsonl", tmp_path / "r_files" / "x.jsonl"],
        "report's folder holds the figures": ["--report", tmp_path / "r.html", "--output-dir", tmp_path / "r_files"],
        "input in the report's folder": ["--report", photos / "p.html", "-f", photos / "p_files" / "x.png"],
    }[case]
    if case == "jsonl in the report's folder":
        (tmp_path / "r_files").mkdir()
    if case == "input in the report's folder":
        (photos / "p_files").mkdir()
        write_image(photos / "p_files" / "x.png", 40, 40)
    out.mkdir()
    code, _, err = run_cli("classify", *LITE, "-f", photos, "--output-dir", out, *extra)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "same file" in err or "is also the output" in err or "where --report" in err or "folder of --report" in err
    named = [str(a) for a in extra if isinstance(a, Path)]
    assert any(n in err for n in named), err
    assert list(out.iterdir()) == [] and not (tmp_path / "same.html").exists()


def test_24_6_evaluate_outputs_that_collide_are_refused(tmp_path):
    photos = _tree(tmp_path / "ph", 1)
    for outputs in (["--json", "e.html", "--csv", "e.html"], ["--csv", "e.html", "--report", "e.html"],
                    ["--json", "e.json", "--plot", "E.png", "--csv", "e_files/x.csv", "--report", "e.html"]):
        (tmp_path / "e_files").mkdir(exist_ok=True)
        code, loaded, err = fresh_campp(["evaluate", *LITE, "-f", photos, *outputs], tmp_path)
        assert (code, loaded) == (2, False), (outputs, err)
        assert ("e.html" in err or "e_files" in err) and ("same file" in err or "folder of --report" in err), err
    code, loaded, err = fresh_campp(["evaluate", *LITE, "-f", photos, "--json", "/dev/null", "--csv", "/dev/null",
                                     "--labels", "missing.txt"], tmp_path)
    assert "same file" not in err  # streams may be shared


def _case_insensitive_lstat(real):
    """os.lstat as on a disk that ignores case and Unicode normalisation: a name finds the entry that equals
    it under both."""
    import unicodedata

    def key(name):
        return unicodedata.normalize("NFC", name).casefold()

    def lstat(path, *args, **kwargs):
        folder, name = os.path.split(os.fspath(path))
        for entry in os.listdir(folder or "."):
            if key(entry) == key(name):
                return real(os.path.join(folder, entry), *args, **kwargs)
        raise FileNotFoundError(2, "No such file or directory", path)

    return lstat


def test_24_21_detecting_a_disk_that_folds_case(tmp_path, monkeypatch):
    from campp_cli.io import names

    names._folds.cache_clear()
    assert names.folds_case(tmp_path) is False  # this disk tells case apart
    names._folds.cache_clear()
    monkeypatch.setattr(names.os, "lstat", _case_insensitive_lstat(os.lstat))
    assert names.folds_case(tmp_path / "not" / "made" / "yet") is True  # probed in the nearest folder there is
    assert list(tmp_path.iterdir()) == []  # the probe is gone
    names._folds.cache_clear()


def test_24_21_names_equal_but_for_case_or_normalisation_are_told_apart(tmp_path, monkeypatch):
    from campp_cli.io import inputs, names

    photos = tmp_path / "photos"
    (photos / "Sub").mkdir(parents=True)
    (photos / "sub").mkdir()
    for name in ("Cat.png", "cat.png", "caf\u00e9.png", "cafe\u0301.png", "Sub/x.png", "sub/x.png"):
        write_image(photos / name, 40, 40)
    keys = ["", "_gradcam_heatmap"]

    def files(jobs):
        import unicodedata

        return [unicodedata.normalize("NFC", str(j.path(k).relative_to(tmp_path / "o"))).casefold()
                for j in jobs for k in keys]

    monkeypatch.setattr(names, "folds_case", lambda folder: True, raising=False)
    jobs = inputs.plan([str(photos)], tmp_path / "o", None, recursive=True, keys=keys)
    assert len(jobs) == 6 and len(set(files(jobs))) == 12  # twelve files a case-blind disk tells apart
    monkeypatch.setattr(names, "folds_case", lambda folder: False)
    jobs = inputs.plan([str(photos)], tmp_path / "o", None, recursive=True, keys=keys)
    assert {j.stem for j in jobs} == {"Cat", "cat", "caf\u00e9", "cafe\u0301", "x"}  # elsewhere names stay as given
    from campp_cli.errors import UsageError

    one = inputs.plan([str(photos / "cat.png")], tmp_path / "o", None, keys=keys)  # o/cat.jpeg...
    with pytest.raises(UsageError, match="CAT.jpeg is also the output"):
        names.check_collisions(one, keys, {"jsonl": tmp_path / "o" / "CAT.jpeg"}, [], folds=True)
    names.check_collisions(one, keys, {"jsonl": tmp_path / "o" / "CAT.jpeg"}, [], folds=False)


def test_a_stop_during_a_results_report_waits_for_the_report_to_end():
    """A SIGTERM that arrives while a result is being reported (its --jsonl line, its stdout line) takes effect
    just after it: the report is never cut half-way (the local engine once lost a --jsonl line so)."""
    import signal as signals

    from campp_cli.run.options import Result
    from campp_cli.run.signals import deferrable
    from campp_cli.run.stages import Tally

    class Stop(BaseException):
        pass

    def stop(signum, frame):
        raise Stop()

    reported = []

    def on_result(result):
        reported.append("started")
        os.kill(os.getpid(), signals.SIGTERM)
        time.sleep(0.05)  # the signal is handled meanwhile
        reported.append("ended")

    previous = signals.signal(signals.SIGTERM, deferrable(stop))
    try:
        tally = Tally(on_result)
        with pytest.raises(Stop):
            tally.record(Result("a.png", 0, "cat", 0.9, []))
        assert reported == ["started", "ended"] and tally.summary.done == 1
        with pytest.raises(Stop):  # outside a report, at once
            os.kill(os.getpid(), signals.SIGTERM)
            time.sleep(0.05)
    finally:
        signals.signal(signals.SIGTERM, previous)
