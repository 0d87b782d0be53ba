"""What the syncs of a photo's crash-safe set of files cost (issue 26, item 6): time, syncs and CPU per set.

Writes ``--sets`` sets of five files (random bytes of ``--kb`` kilobytes each: by default the sizes of a
640x480 photo's JPEG figures, 150 KB for the comparison figure, 20 and 40 KB for each method's heatmap and
overlay) into a fresh folder, once per variant, in interleaved rounds, from ``--threads`` threads as campp's
finishing threads do; prints per variant the medians over ``--repeats`` rounds, then the figures as JSON on
the last line:

- ``campp``: :func:`campp_cli.io.durable.write_all_atomic` as it is: every temporary file fsync'ed, the
  journal fsync'ed, the folder fsync'ed before the renames and after them (5 + 1 + 2 = 8 syncs a set);
- ``syncfs``: the same steps with the six file syncs and the first folder sync replaced by one Linux
  ``syncfs(2)`` of the folder's filesystem, the second folder sync by another (2 syncs a set);
- ``no data sync``: the journal and the folder synced, never the files' data (3 syncs a set; UNSAFE: after a
  power loss a renamed file may be empty, see ext4's and XFS's delayed allocation), to show what the data
  syncs cost;
- ``no sync``: each file written under a temporary name and renamed into place, nothing synced, no journal
  (:func:`campp_cli.io.durable.replace_unsynced`): the floor.

Figures per set: wall ms; syncs (``os.fsync`` and ``syncfs`` calls, counted); this process's CPU ms, user and
system (``getrusage``: every thread, the kernel's work inside its system calls); the machine's busy CPU ms
(``/proc/stat``, all cores: adds the kernel's journal and writeback threads and interrupts, and whatever else
the machine runs, so it is noisy where the machine is shared); and ``then sync`` ms: an ``os.sync()`` after
the round, the writeback a variant left for later (each round starts after an untimed ``os.sync()``).

With ``--campp FOLDER``, also runs ``campp classify -f FOLDER`` (EfficientNet-Lite0, CPU, a fresh output folder
in the same place) once per variant in each round: as it is, with ``syncfs``, and with ``os.fsync`` a no-op (no
sync at all: what fewer syncs could save at most), and prints each one's median wall and CPU seconds (user +
system of the whole process: model, decoding, drawing, encoding, writing).

    python benchmarks/fsync.py --sets 64 --repeats 9
    python benchmarks/fsync.py --dir /dev/shm --threads 1   # another folder (here: tmpfs), one thread
    python benchmarks/fsync.py --repeats 3 --campp photos/  # also end to end, 3 rounds

With ``--dirty MB``, also times one set per variant and round just after another program's MB (a new file
in the same filesystem, written and left unsynced, as a download or a checkpoint would be): a ``syncfs``
writes that file back too, an ``fsync`` only its own file.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from campp_cli.io import durable, tempfiles  # noqa: E402
from campp_cli.run.options import default_workers  # noqa: E402

SUFFIXES = ["", "_gradcam_heatmap", "_gradcam_overlay", "_gradcampp_heatmap", "_gradcampp_overlay"]

_syncs = [0]
_count_lock = threading.Lock()
_real_fsync = os.fsync


def _count() -> None:
    with _count_lock:
        _syncs[0] += 1


def _counted_fsync(fd: int) -> None:
    _count()
    _real_fsync(fd)


_libc = ctypes.CDLL(None, use_errno=True)


def syncfs(fd: int) -> None:
    _count()
    if _libc.syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _syncfs_of(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        syncfs(fd)
    finally:
        os.close(fd)


def _write_unsynced(path: str, data: bytes) -> int:
    fd = tempfiles.create_locked(path)
    tempfiles.write_fd(fd, data)
    return fd


def _set_with(files: dict[Path, bytes], sync_stage, sync_commit) -> None:
    """durable's steps with the files and the journal written unsynced, then ``sync_stage(folder, fds)``
    before the renames and ``sync_commit(folder)`` after them (no error handling: a benchmark)."""
    folder = next(iter(files)).parent
    key = tempfiles.short_tag("/".join(p.name for p in files) + f"|{id(files)}")
    temps, fds = {}, []
    for k, (final, data) in enumerate(files.items()):
        temps[final] = str(folder / tempfiles.temp_name(f"{key}-{k}.part"))
        fds.append(_write_unsynced(temps[final], data))
    journal = str(folder / tempfiles.temp_name(f"pending-{key}.json"))
    fds.append(_write_unsynced(journal, json.dumps([p.name for p in files]).encode()))
    sync_stage(folder, fds)
    for final, tmp in temps.items():
        os.replace(tmp, final)
    sync_commit(folder)
    os.unlink(journal)
    for fd in fds:
        os.close(fd)


def campp(files: dict[Path, bytes]) -> None:
    durable.write_all_atomic(files)


def with_syncfs(files: dict[Path, bytes]) -> None:
    _set_with(files, lambda folder, fds: _syncfs_of(folder), _syncfs_of)


def no_data_sync(files: dict[Path, bytes]) -> None:
    def stage(folder, fds):
        os.fsync(fds[-1])  # the journal
        durable._fsync_dir(folder)

    _set_with(files, stage, durable._fsync_dir)


def no_sync(files: dict[Path, bytes]) -> None:
    for path, data in files.items():
        durable.replace_unsynced(path, data)


VARIANTS = {"campp": campp, "syncfs": with_syncfs, "no data sync (unsafe)": no_data_sync, "no sync": no_sync}


# campp itself, with a variant's syncs: the files' and the journal's fsyncs dropped and each folder sync a syncfs,
# or every fsync a no-op.
CAMPP_RUN = """
import os, sys
from campp_cli.io import durable
variant = sys.argv.pop(1)
if variant == "syncfs":
    sys.path.insert(0, {bench!r})
    import fsync as bench
    def _write_unsynced(folder, name, data):
        tmp = os.path.join(folder, name)
        return tmp, bench._write_unsynced(tmp, data)
    durable._write_synced = _write_unsynced
    durable._fsync_dir = bench._syncfs_of
elif variant == "no sync":
    os.fsync = lambda fd: None
from campp_cli.cli.main import main
sys.argv[0] = "campp"
main()
"""

CAMPP_VARIANTS = ["campp", "syncfs", "no sync"]


def campp_round(variant: str, photos: Path, root: Path) -> dict[str, float]:
    out = Path(tempfile.mkdtemp(prefix="out-", dir=root))
    cmd = [sys.executable, "-c", CAMPP_RUN.format(bench=str(Path(__file__).resolve().parent)), variant,
           "classify", "--arch", "efficientnet_lite0", "-f", str(photos), "--output-dir", str(out), "-gpu", "-1", "-q"]
    os.sync()
    usage0, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, CAMPP_OFFLINE="1"), capture_output=True, text=True)
    wall, usage = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"campp ({variant}) failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    files = sum(1 for p in out.iterdir() if not p.name.startswith(tempfiles.TEMP_PREFIX))
    shutil.rmtree(out)
    return {"s": wall, "cpu_s": usage.ru_utime - usage0.ru_utime + usage.ru_stime - usage0.ru_stime, "files": files}


def dirty_round(write, root: Path, payload: list[bytes], megabytes: int) -> float:
    """ms for one set written just after ``megabytes`` of another, new file were left dirty in the page cache."""
    folder = Path(tempfile.mkdtemp(prefix="dirty-", dir=root))
    os.sync()
    chunk = random.Random(1).randbytes(1 << 20)
    with open(folder / "another-programs-file", "wb") as other:  # new: no flush on close (ext4's auto_da_alloc)
        for _ in range(megabytes):
            other.write(chunk)
    start = time.perf_counter()
    write({folder / f"photo{s}.jpeg": data for s, data in zip(SUFFIXES, payload)})
    elapsed = time.perf_counter() - start
    shutil.rmtree(folder)
    return elapsed * 1e3


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy so far (every core; /proc/stat, in clock ticks)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return float("nan")
    user, nice, system, idle, iowait, irq, softirq = (int(x) for x in fields[:7])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def one_round(write, root: Path, payloads: list[list[bytes]], threads: int) -> dict[str, float]:
    folder = Path(tempfile.mkdtemp(prefix="sets-", dir=root))
    sets = [{folder / f"photo{i:04d}{s}.jpeg": data for s, data in zip(SUFFIXES, payload)}
            for i, payload in enumerate(payloads)]
    os.sync()  # what the previous round left is not charged to this one
    _syncs[0] = 0
    usage0, busy0, start = resource.getrusage(resource.RUSAGE_SELF), machine_busy_s(), time.perf_counter()
    if threads == 1:
        for files in sets:
            write(files)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(write, sets))
    wall = time.perf_counter() - start
    busy, usage = machine_busy_s() - busy0, resource.getrusage(resource.RUSAGE_SELF)
    syncs = _syncs[0]
    start = time.perf_counter()
    os.sync()
    then_sync = time.perf_counter() - start
    written = sorted(p.name for p in folder.iterdir())
    assert written == sorted(p.name for files in sets for p in files), "a variant left a temporary file"
    shutil.rmtree(folder)
    n = len(sets)
    return {"ms": wall * 1e3 / n, "syncs": syncs / n, "user_ms": (usage.ru_utime - usage0.ru_utime) * 1e3 / n,
            "sys_ms": (usage.ru_stime - usage0.ru_stime) * 1e3 / n, "machine_ms": busy * 1e3 / n,
            "then_sync_ms": then_sync * 1e3 / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", type=int, default=64, help="sets written per variant and round")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--kb", type=int, nargs=5, default=[150, 20, 40, 20, 40], help="the five files' sizes")
    parser.add_argument("--threads", type=int, default=default_workers(),
                        help="writing threads (campp's default: one per core, at most four)")
    parser.add_argument("--dir", type=Path, default=None, help="write there (default: a temporary folder)")
    parser.add_argument("--campp", type=Path, metavar="FOLDER", default=None,
                        help="also run campp classify -f FOLDER with each variant's syncs, end to end")
    parser.add_argument("--dirty", type=int, metavar="MB", default=0,
                        help="also time one set after another program left MB unsynced in the same filesystem")
    args = parser.parse_args()
    os.fsync = _counted_fsync  # durable calls os.fsync through the module: every sync is counted
    rng = random.Random(0)
    payloads = [[rng.randbytes(kb * 1000) for kb in args.kb] for _ in range(args.sets)]
    root = Path(tempfile.mkdtemp(prefix="campp-fsync-", dir=args.dir))
    try:
        for write in VARIANTS.values():  # one untimed round each: the folder's metadata is warm for all
            one_round(write, root, payloads, args.threads)
        rounds = {name: [] for name in VARIANTS}
        campp_runs = {name: [] for name in CAMPP_VARIANTS} if args.campp else {}
        dirty_runs = {name: [] for name in VARIANTS} if args.dirty else {}
        for _ in range(args.repeats):
            for name, write in VARIANTS.items():
                rounds[name].append(one_round(write, root, payloads, args.threads))
            for name in campp_runs:
                campp_runs[name].append(campp_round(name, args.campp, root))
            for name in dirty_runs:
                dirty_runs[name].append(dirty_round(VARIANTS[name], root, payloads[0], args.dirty))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"{args.sets} sets of {len(args.kb)} files ({sum(args.kb)} KB) per round, {args.threads} thread(s), "
          f"in {root.parent} ({_filesystem(root.parent)}); medians of {args.repeats} interleaved rounds, per set:")
    print(f"{'':22s} {'ms':>6s} {'syncs':>5s} {'user ms':>8s} {'sys ms':>7s} {'machine ms':>10s} "
          f"{'then sync ms':>12s}")
    results = {}
    for name, runs in rounds.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        results[name] = {k: round(v, 3) for k, v in med.items()}
        results[name]["ms_runs"] = [round(r["ms"], 2) for r in runs]
        print(f"{name:22s} {med['ms']:6.2f} {med['syncs']:5.1f} {med['user_ms']:8.2f} {med['sys_ms']:7.2f} "
              f"{med['machine_ms']:10.2f} {med['then_sync_ms']:12.2f}")
    dirty = {}
    for name, r in dirty_runs.items():
        dirty[name] = {"ms": round(statistics.median(r), 2), "ms_runs": [round(x, 2) for x in r]}
        print(f"one set after {args.dirty} MB of another file left dirty ({name}): {dirty[name]['ms']:.2f} ms "
              f"(median of {len(r)})")
    end_to_end = {}
    for name, r in campp_runs.items():
        wall, cpu = statistics.median(x["s"] for x in r), statistics.median(x["cpu_s"] for x in r)
        end_to_end[name] = {"s": round(wall, 2), "cpu_s": round(cpu, 2), "files": r[0]["files"],
                            "s_runs": [round(x["s"], 2) for x in r], "cpu_s_runs": [round(x["cpu_s"], 2) for x in r]}
        print(f"campp classify -f {args.campp} ({name}): {wall:.2f} s, {cpu:.2f} CPU-s, {r[0]['files']} files "
              f"(medians of {len(r)})")
    print(json.dumps({"sets": args.sets, "kb": args.kb, "threads": args.threads, "repeats": args.repeats,
                      "folder": str(root.parent), "filesystem": _filesystem(root.parent),
                      "load_average": os.getloadavg(), "cpus": os.cpu_count(), "results": results,
                      "dirty_mb": args.dirty, "after_dirty": dirty, "end_to_end": end_to_end}))


def _filesystem(path: Path) -> str:
    """The type of the filesystem mounted deepest above ``path`` (from /proc/mounts), or '?'."""
    best, kind = "", "?"
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return kind
    real = os.path.realpath(path)
    for line in lines:
        parts = line.split()
        if len(parts) >= 3 and (real == parts[1] or real.startswith(parts[1].rstrip("/") + "/")) \
                and len(parts[1]) >= len(best):
            best, kind = parts[1], parts[2]
    return kind


if __name__ == "__main__":
    main()
