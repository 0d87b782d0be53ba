"""The Ray engine: the same files, maps and lines as the local engine, on a local Ray and a two-node cluster.

Without Ray installed the tests that need it are skipped (the engine is an extra: campp[ray]).
Ray starts once per module (each start costs seconds); the two-node cluster has its own module-scoped fixture.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import IMAGES, fresh_campp, write_image

LITE = ["--arch", "efficientnet_lite0"]


def _needs_ray():
    return pytest.importorskip("ray.data", reason="Ray is not installed (pip install 'campp[ray]')")


# --- without Ray running -------------------------------------------------------------------------------------

def test_help_and_setting_errors_import_neither_ray_nor_torch(tmp_path):
    code, loaded, err = fresh_campp(["classify", "--help"], tmp_path, module="ray")
    assert (code, loaded) == (0, False)
    code, loaded, err = fresh_campp(["classify", "-f", "x.jpg", "--actors", "2"], tmp_path, module="ray")
    assert (code, loaded) == (2, False)
    assert err.strip() == "campp: error: --actors is a setting of --engine ray, not of --engine local"
    code, loaded, err = fresh_campp(["evaluate", "-f", "x.jpg", "--engine", "ray", "--actors", "0"], tmp_path,
                                    module="torch")
    assert (code, loaded) == (2, False)
    assert "--actors" in err and len(err.strip().splitlines()) == 1
    code, loaded, err = fresh_campp(["classify", "-f", "x.jpg", "--engine", "ray", "-gpu", "0"], tmp_path,
                                    module="ray")
    assert (code, loaded) == (2, False)
    assert err.strip() == ("campp: error: -gpu places the model on this machine; --engine ray places its own "
                           "(see --gpus-per-actor)")


def test_engine_choices_come_from_the_registry(run_cli):
    from campp_cli.run.engines import list_engines, register_engine, unregister_engine

    register_engine("nowhere", "campp_cli.no_such_module:run", "a test engine", extra="nowhere",
                    requires="campp_no_such_module")
    try:
        from campp_cli.errors import UsageError
        from campp_cli.run.engines import load_engine

        assert "nowhere" in list_engines()
        with pytest.raises(UsageError, match=r"pip install 'campp\[nowhere\]'"):
            load_engine("nowhere")
    finally:
        unregister_engine("nowhere")
    assert "nowhere" not in list_engines()
    code, out, _ = run_cli("classify", "--help")
    assert all(f"{name}," in " ".join(out.split()) for name in list_engines())


@pytest.mark.parametrize("address, why", [("127.0.0.1:1", "refused"), ("nonsense", "give auto, HOST:PORT")])
def test_an_unreachable_cluster_is_one_line(run_cli, tmp_path, address, why):
    _needs_ray()
    import ray

    if ray.is_initialized():
        pytest.skip("a Ray of this test session is running")
    code, out, err = run_cli("classify", *LITE, "-f", IMAGES / "coffee.png", "--output-dir", tmp_path,
                             "--engine", "ray", "--ray-address", address, "-q")
    assert code == 2
    assert err.startswith(f"campp: error: cannot reach Ray at {address}: ")
    assert why in err and len(err.strip().splitlines()) == 1
    assert not ray.is_initialized()


# --- a local Ray ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def local_ray():
    _needs_ray()
    import ray

    from campp_cli.run.engines import ray as ray_engine

    started = ray_engine.connect(None, actors=2)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """16 photos of varied sizes, one of them corrupt."""
    folder = tmp_path_factory.mktemp("photos")
    for k in range(15):
        write_image(folder / f"p{k:02d}.jpg", 180 + 23 * k, 260 - 7 * k, seed=k)
    (folder / "p15.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    return folder


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _same_line(a: dict, b: dict, out_a: Path, out_b: Path) -> None:
    """Equal JSONL lines: the output folder swapped, probabilities within 1e-5 (batches may differ)."""
    a = json.loads(json.dumps(a).replace(str(out_a), "OUT"))
    b = json.loads(json.dumps(b).replace(str(out_b), "OUT"))
    if "top5" in a:
        assert [t["class"] for t in a["top5"]] == [t["class"] for t in b["top5"]]
        np.testing.assert_allclose([t["probability"] for t in a["top5"]], [t["probability"] for t in b["top5"]],
                                   atol=1e-5)
        assert a["probability"] == pytest.approx(b["probability"], abs=1e-5)
        for d in (a, b):
            d.pop("top5"), d.pop("probability")
    assert a == b


@pytest.mark.slow
def test_ray_writes_what_the_local_engine_writes(local_ray, photos, tmp_path, run_cli):
    methods = "gradcam,gradcampp,layercam,eigencam"
    runs = {}
    for engine in ("local", "ray"):
        out = tmp_path / engine
        code, stdout, err = run_cli("classify", *LITE, "-f", photos, "--output-dir", out, "--save-maps",
                                    "--methods", methods, "--jsonl", tmp_path / f"{engine}.jsonl",
                                    "--engine", engine, "--batch-size", "4", "--report", tmp_path / f"{engine}.html")
        assert code == 1, err  # the corrupt photo
        assert "p15.jpg" in err and "15 done, 0 skipped, 1 failed" in err
        runs[engine] = (out, stdout, err)
    local, ray_out = tmp_path / "local", tmp_path / "ray"
    names = sorted(p.name for p in local.iterdir())
    assert names == sorted(p.name for p in ray_out.iterdir())
    assert len(names) == 15 * (1 + 4 * 3)  # comparison, and per method heatmap, overlay, .npy
    for name in names:
        if name.endswith(".npy"):
            np.testing.assert_allclose(np.load(ray_out / name), np.load(local / name), atol=1e-5, err_msg=name)
    lines = {e: _lines(tmp_path / f"{e}.jsonl") for e in runs}
    assert [d["input"] for d in lines["ray"]] == sorted(str(p) for p in photos.iterdir())  # input order
    for a, b in zip(lines["ray"], lines["local"], strict=True):
        _same_line(a, b, ray_out, local)
    # The report: the same cards, their images made on the workers.
    from test_report import page_data

    from campp_cli.outputs.report import asset_name

    pages = {e: page_data(tmp_path / f"{e}.html") for e in runs}
    assert pages["ray"]["counts"] == pages["local"]["counts"] == {"done": 15, "failed": 1, "skipped": 0, "total": 16}
    for i, (a, b) in enumerate(zip(pages["ray"]["records"], pages["local"]["records"], strict=True)):
        assert a["input"] == b["input"] and a.get("class_name") == b.get("class_name")
        assert a.get("error") == b.get("error")
        if "disagreement" in b:
            assert a["disagreement"] == pytest.approx(b["disagreement"], abs=1e-3)
            for kind, method in [("thumb", None), ("photo", None), *[("heatmap", m) for m in methods.split(",")]]:
                assert (tmp_path / "ray_files" / asset_name(i, kind, method)).is_file()
    # The per-image lines on stdout, in the same order.
    assert runs["ray"][1].replace(str(ray_out), "OUT").splitlines()[0].split(":")[0] == \
        runs["local"][1].replace(str(local), "OUT").splitlines()[0].split(":")[0]

    # Resume: everything done is skipped, the corrupt photo fails again.
    code, stdout, err = run_cli("classify", *LITE, "-f", photos, "--output-dir", ray_out, "--save-maps",
                                "--methods", methods, "--engine", "ray", "--skip-existing")
    assert code == 1
    assert "0 done, 15 skipped, 1 failed" in err


@pytest.mark.slow
def test_ray_evaluates_as_the_local_engine_does(local_ray, photos, tmp_path, run_cli):
    four = [photos / f"p0{k}.jpg" for k in range(4)]
    docs = {}
    for engine in ("local", "ray"):
        args = [a for p in four for a in ("-f", p)]
        code, out, err = run_cli("evaluate", *LITE, *args, "--steps", "4", "--json", tmp_path / f"{engine}.json",
                                 "--engine", engine, "-q", "--report", tmp_path / f"{engine}.html")
        assert code == 0, err
        docs[engine] = json.loads((tmp_path / f"{engine}.json").read_text())
    from test_report import page_data

    pages = {e: page_data(tmp_path / f"{e}.html") for e in docs}
    for a, b in zip(pages["ray"]["records"], pages["local"]["records"], strict=True):
        assert a["input"] == b["input"] and a["scores"].keys() == b["scores"].keys()
        for m in a["scores"]:
            assert a["scores"][m]["drop_percent"] == pytest.approx(b["scores"][m]["drop_percent"], abs=1e-2)
    for method, stats in docs["local"]["methods"].items():
        other = docs["ray"]["methods"][method]
        assert stats["n"] == other["n"] == 4
        for key in ("average_drop", "increase_in_confidence", "deletion_auc", "insertion_auc"):
            assert other[key] == pytest.approx(stats[key], abs=1e-4), (method, key)


def test_a_broken_model_ends_the_ray_run_in_one_line(local_ray, tmp_path, monkeypatch):
    """An error that ends a local run (non-finite logits) ends a Ray run too, raised on the driver."""
    from campp_cli.errors import CamppError
    from campp_cli.io.inputs import Job
    from campp_cli.models.loading import load_classifier
    from campp_cli.run.engines import ray as ray_engine

    clf = load_classifier("efficientnet_lite0")
    jobs = [Job(IMAGES / "coffee.png", tmp_path, "coffee", ".jpeg")]
    model = tmp_path / "nan.pth"
    import torch

    state = torch.load(clf.weights_source, weights_only=True)
    state = {k: (torch.full_like(v, float("nan")) if v.is_floating_point() else v) for k, v in state.items()}
    torch.save(state, model)
    broken = load_classifier("efficientnet_lite0", weights=model)
    with pytest.raises(CamppError, match="non-finite|NaN|nan"):
        ray_engine.run(jobs, broken)
    assert not list(tmp_path.glob("coffee*.jpeg"))


def test_a_head_and_classes_of_ones_own_reach_the_actors(local_ray, tmp_path):
    """The actors load the model as the driver did: --num-classes and --labels included."""
    import torch
    import torchvision

    from campp_cli.io.inputs import Job
    from campp_cli.models.loading import load_classifier
    from campp_cli.run.engines import ray as ray_engine
    from campp_cli.run.options import Options

    torch.manual_seed(3)
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), tmp_path / "three.pth")
    clf = load_classifier("resnet18", weights=tmp_path / "three.pth", num_classes=3, labels=["a", "b", "c"])
    results = []
    ray_engine.run([Job(IMAGES / "coffee.png", tmp_path, "coffee", ".jpeg")], clf, Options(label=1), results.append)
    assert results[0].error is None, results[0].error
    assert (results[0].class_index, results[0].class_name) == (1, "b")
    assert {name for _, name, _ in results[0].top5} == {"a", "b", "c"}


@pytest.mark.slow
def test_a_model_of_ones_own_and_its_preprocessing_reach_the_actors(local_ray, tmp_path, monkeypatch):
    """--model FILE.py:FUNCTION, --input-size and --resize: the actors' results equal the local engine's."""
    from campp_cli.io.inputs import Job
    from campp_cli.models.loading import load_classifier
    from campp_cli.models.preprocessing import Overrides
    from campp_cli.run.engines import local as pipeline
    from campp_cli.run.engines import ray as ray_engine
    from campp_cli.run.options import Options

    (tmp_path / "net.py").write_text(
        "import torch\nfrom torch import nn\n\ndef build():\n    torch.manual_seed(0)\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),"
        " nn.Linear(4, 5))\n")
    monkeypatch.chdir(tmp_path)
    clf = load_classifier(model="net.py:build", preprocessing=Overrides(size=40, resize="pad"))
    got = {}
    for name, run in (("local", pipeline.run), ("ray", ray_engine.run)):
        out = tmp_path / name
        out.mkdir()
        results = []
        run([Job(IMAGES / "chelsea.png", out, "chelsea", ".jpeg")], clf, Options(save_maps=True), results.append)
        assert results[0].error is None, results[0].error
        got[name] = (results[0].probability, np.load(out / "chelsea_gradcampp.npy"))
    assert got["ray"][0] == pytest.approx(got["local"][0], abs=1e-6)
    assert got["ray"][1].shape == (38, 38)  # 40 px in, a 3x3 convolution without padding
    np.testing.assert_allclose(got["ray"][1], got["local"][1], atol=1e-5)


# --- two nodes -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    _needs_ray()
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    trap = tmp_path_factory.mktemp("trap")
    os.environ["CAMPP_TEST_RAY_DIE_ONCE"] = str(trap)  # the nodes' processes inherit it
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    yield ray, trap
    ray.shutdown()
    cluster.shutdown()
    del os.environ["CAMPP_TEST_RAY_DIE_ONCE"]


def _jobs(photos: Path, out: Path, count: int):
    from campp_cli.io.inputs import Job

    return [Job(p, out, p.stem, ".jpeg") for p in sorted(photos.iterdir())[:count]]


@pytest.mark.slow
def test_two_nodes_share_the_work(two_nodes, photos, tmp_path):
    from campp_cli.models.loading import load_classifier
    from campp_cli.run.engines import ray as ray_engine
    from campp_cli.run.options import Options

    ray, _ = two_nodes
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    clf = load_classifier("efficientnet_lite0")
    results = []
    summary = ray_engine.run(_jobs(photos, tmp_path, 16), clf, Options(batch_size=2), results.append, actors=2)
    assert (summary.done, summary.failed) == (15, 1)
    assert [Path(r.input).name for r in results] == [f"p{k:02d}.jpg" for k in range(16)]
    nodes = {node for r in results for node in r.extra.get("nodes", [])}
    assert nodes == {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    for r in results[:15]:
        assert all(Path(p).stat().st_size > 0 for p in r.outputs)


@pytest.mark.slow
def test_a_worker_that_dies_is_retried_and_nothing_is_lost(two_nodes, photos, tmp_path):
    from campp_cli.io import formats
    from campp_cli.models.loading import load_classifier
    from campp_cli.run.engines import ray as ray_engine
    from campp_cli.run.options import Options

    ray, trap = two_nodes
    (trap / "armed").write_text("")
    clf = load_classifier("efficientnet_lite0")
    results = []
    summary = ray_engine.run(_jobs(photos, tmp_path, 8), clf, Options(batch_size=4), results.append, actors=2)
    assert (trap / "fired").exists(), "the trap did not kill a worker"
    assert (summary.done, summary.failed) == (8, 0)
    for r in results:
        assert len(r.outputs) == 5 and all(formats.is_complete(p) for p in r.outputs)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".campp-")]  # no journal, no temporary


@pytest.mark.slow
def test_nodes_that_miss_a_path_are_named(two_nodes, tmp_path):
    from campp_cli.run.engines import ray as ray_engine

    ray, _ = two_nodes
    nodes = [n for n in ray.nodes() if n["Alive"]]
    there = tmp_path / "there.txt"
    there.write_text("x")
    missing = ray_engine.missing_on_nodes([str(there), str(tmp_path / "gone")], nodes)
    assert len(missing) == 2 and all(v == [str(tmp_path / "gone")] for v in missing.values())
    assert ray_engine.missing_on_nodes([str(there)], nodes) == {}


@pytest.mark.slow
def test_the_output_folder_is_checked_on_every_node(two_nodes, photos, tmp_path, monkeypatch):
    """A node that does not see the output folder: refused in one line before any work."""
    from campp_cli.errors import UsageError
    from campp_cli.run.engines import ray as ray_engine

    ray, _ = two_nodes
    nodes = [n for n in ray.nodes() if n["Alive"]]
    real = ray_engine.missing_on_nodes

    def one_node_blind(paths, nodes):  # as if the second node mounted nothing: ask it for paths nobody has
        found = real(paths, nodes[:1])
        found.update(real([p + ".elsewhere" for p in paths], nodes[1:]))
        return found

    from campp_cli.run.engines import ray_cluster

    monkeypatch.setattr(ray_cluster, "missing_on_nodes", one_node_blind)
    with pytest.raises(UsageError, match="does not see .* filesystem every node sees"):
        ray_engine.check_shared(os.getcwd(), _jobs(photos, tmp_path / "out", 2), nodes)
    assert not [p for p in (tmp_path / "out").iterdir()]  # the marker is gone
    shutil.rmtree(tmp_path / "out")


# --- signals, and a local Ray that dies with its driver ------------------------------------------------------

def _ray_run(tmp_path: Path, count: int = 48):
    """``campp classify --engine ray`` on ``count`` photos in a process of its own, and its files."""
    import subprocess
    import sys

    photos = tmp_path / "photos"
    photos.mkdir()
    for k in range(count):
        write_image(photos / f"p{k:02d}.png", 96, 80, seed=k)
    out, jsonl, report = tmp_path / "out", tmp_path / "run.jsonl", tmp_path / "run.html"
    proc = subprocess.Popen([sys.executable, "-m", "campp_cli", "classify", *LITE, "-f", photos, "--output-dir", out,
                             "--engine", "ray", "--actors", "1", "--batch-size", "2", "--jsonl", jsonl,
                             "--report", report], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path)
    return proc, out, jsonl, report


def _wait_for_a_line(proc, jsonl: Path) -> None:
    """Until the run has reported an image (a guard of minutes against a hang: Ray starts in seconds)."""
    import time

    for _ in range(3000):
        if jsonl.exists() and jsonl.read_text().strip():
            return
        if proc.poll() is not None:
            pytest.fail(f"the run ended before reporting an image: {proc.stderr.read()[-2000:]}")
        time.sleep(0.1)
    proc.kill()
    pytest.fail("no image reported in 300 s")


def _ray_processes(driver: int) -> dict[int, bytes]:
    """{pid: start time} of the processes below ``driver`` whose command line names Ray."""
    procs = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as fh:
                    fields = fh.read().rsplit(b")", 1)[1].split()
                command = Path(f"/proc/{name}/cmdline").read_bytes()
            except OSError:
                continue
            procs[int(name)] = (int(fields[1]), fields[19], command, fields[0])
    found, todo = {}, [driver]
    while todo:
        parent = todo.pop()
        for pid, (ppid, start, command, _) in procs.items():
            if ppid == parent and pid not in found:
                todo.append(pid)
                if b"ray" in command:
                    found[pid] = start
    return found


def _still_running(known: dict[int, bytes]) -> list[int]:
    alive = []
    for pid, start in known.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if fields[19] == start and fields[0] != b"Z":
            alive.append(pid)
    return alive


@pytest.mark.slow
@pytest.mark.parametrize("sig, code, word", [("SIGTERM", 143, "terminated"), ("SIGINT", 130, "interrupted")])
def test_a_signal_stops_a_ray_run_as_it_stops_a_local_one(tmp_path, sig, code, word):
    """The local engine's contract: the sets being written are finished, every image done is reported
    (stdout, --jsonl and --report match the sets on disk), one 'aborted' line, exit 130 or 143 (before: Ray's
    own SIGTERM handler exited 15 at once, with nothing reported)."""
    import signal

    _needs_ray()
    proc, out, jsonl, report = _ray_run(tmp_path)
    _wait_for_a_line(proc, jsonl)
    proc.send_signal(getattr(signal, sig))
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == code, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == f"campp: aborted ({word}); every output file on disk is complete"
    lines = _lines(jsonl)
    assert 0 < len(lines) < 48  # stopped part-way
    on_disk = sorted(p.name for p in out.iterdir() if p.name.endswith(".jpeg") and "_" not in p.name)
    assert sorted(Path(line["outputs"][0]).name for line in lines) == on_disk
    assert len([s for s in stdout.splitlines() if " -> " in s]) == len(lines)
    from test_report import page_data

    data = page_data(report)
    assert sorted(r["input"] for r in data["records"]) == sorted(line["input"] for line in lines)
    assert not [p for p in out.iterdir() if p.name.startswith(".campp-")]  # no temporary or journal left


@pytest.mark.slow
def test_a_killed_driver_takes_its_local_ray_with_it(tmp_path):
    """SIGKILL of campp: the Ray it started (raylet, GCS, ray::DashboardAgent, ray::RuntimeEnvAgent, workers)
    goes too, through campp's watchdog (before: the agents ran on, orphaned)."""
    import time

    _needs_ray()
    proc, _, jsonl, _ = _ray_run(tmp_path, count=24)
    _wait_for_a_line(proc, jsonl)
    known = _ray_processes(proc.pid)
    assert len(known) >= 3, known  # at least the GCS, the raylet and an agent
    proc.kill()
    proc.communicate()
    for _ in range(600):  # a guard of a minute: the watchdog looks twice a second
        left = _still_running(known)
        if not left:
            return
        time.sleep(0.1)
    for pid in left:  # leave no orphans behind this test, then fail
        with contextlib.suppress(OSError):
            os.kill(pid, 9)
    pytest.fail(f"processes of the killed driver's Ray still run: {left}")
