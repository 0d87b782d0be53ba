"""The syncs of a crash-safe set of files: how many, and in which order (README, "Nothing lost").

A SIGKILL needs no sync (the page cache outlives the process); the syncs are what a power loss or an OS crash
needs, and no kill test sees them: these tests watch the calls themselves.  What each one buys:

- every file synced before the journal is synced: a renamed file whose journal is gone from the disk is
  whole (with delayed allocation, ext4 and XFS may otherwise keep the name and lose the data);
- the journal and the folder synced before the first rename: a rename that reaches the disk finds the
  journal there, so recovery can undo a half-renamed set;
- the folder synced after the last rename and before the journal is removed: the journal leaves the disk
  only after every rename is on it.

benchmarks/fsync.py measures what these syncs cost.
"""

from __future__ import annotations

import os
import stat

import pytest

from campp_cli.io import durable


@pytest.fixture()
def calls(monkeypatch):
    """Every fsync (by inode: a temporary file keeps its inode under its final name), rename and removal that
    :mod:`campp_cli.io.durable` makes, in order."""
    log = []
    real_fsync, real_replace, real_unlink = os.fsync, os.replace, os.unlink

    def fsync(fd):
        st = os.fstat(fd)
        log.append(("fsync", "folder" if stat.S_ISDIR(st.st_mode) else st.st_ino))
        return real_fsync(fd)

    def replace(src, dst):
        log.append(("rename", os.lstat(src).st_ino))
        return real_replace(src, dst)

    def unlink(path):
        try:
            log.append(("unlink", os.lstat(path).st_ino))
        except OSError:
            pass  # nothing there: the clean-up's removals of temporaries already renamed
        return real_unlink(path)

    monkeypatch.setattr(durable.os, "fsync", fsync)
    monkeypatch.setattr(durable.os, "replace", replace)
    monkeypatch.setattr(durable.os, "unlink", unlink)
    return log


def test_a_set_is_synced_in_order_eight_syncs_for_five_files(tmp_path, calls):
    files = {tmp_path / f"p{s}.jpeg": bytes([k]) * (1000 + k) for k, s in
             enumerate(["", "_gradcam_heatmap", "_gradcam_overlay", "_gradcampp_heatmap", "_gradcampp_overlay"])}
    durable.write_all_atomic(files, source="p.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in files)
    inodes = {os.lstat(p).st_ino for p in files}
    synced = [what for kind, what in calls if kind == "fsync"]
    assert len(synced) == 8  # each file, the journal, the folder twice
    journal = [what for kind, what in calls if kind == "unlink"]
    assert len(journal) == 1 and journal[0] not in inodes  # the journal, removed once the set is whole
    journal = journal[0]
    order = [(kind, "journal" if what == journal else "file" if what in inodes else what) for kind, what in calls]
    assert order == [("fsync", "file")] * 5 + [("fsync", "journal"), ("fsync", "folder")] + \
        [("rename", "file")] * 5 + [("fsync", "folder"), ("unlink", "journal")]
    assert set(synced[:5]) == inodes  # every file synced, each once


def test_a_single_file_is_synced_before_its_rename(tmp_path, calls):
    target = tmp_path / "r.json"
    durable.write_atomic(target, b'{"a": 1}\n')
    assert target.read_bytes() == b'{"a": 1}\n'
    ino = os.lstat(target).st_ino
    assert calls == [("fsync", ino), ("fsync", "folder"), ("rename", ino), ("fsync", "folder")]  # no journal
