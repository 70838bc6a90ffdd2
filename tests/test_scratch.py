"""Scratch folders (issue 24): what a process killed with kill -9 leaves is removed by the next one; a folder a
live process is using is never touched."""

import os
import signal
import subprocess
import sys
import time

from openllm.scratch import OWNER, clean_stale, release, scratch_dir

HOLD = (
    "import sys, time\n"
    "from openllm.scratch import scratch_dir\n"
    "with scratch_dir(sys.argv[1], sys.argv[2]) as d:\n"
    "    (d / 'payload').write_bytes(b'x' * 1000)\n"
    "    print(d, flush=True)\n"
    "    time.sleep(60)\n"
)


def test_a_killed_owners_folder_goes_and_a_live_ones_stays(tmp_path):
    procs = [
        subprocess.Popen([sys.executable, "-c", HOLD, "openllm-t-", str(tmp_path)], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    try:
        dead, live = (p.stdout.readline().strip() for p in procs)
        os.kill(procs[0].pid, signal.SIGKILL)
        procs[0].wait()
        assert os.path.isdir(dead)  # kill -9 runs no cleanup
        with scratch_dir("openllm-t-", tmp_path) as mine:
            assert not os.path.exists(dead) and os.path.isdir(live) and (mine / OWNER).is_file()
        assert not mine.exists()
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_other_folders_and_fresh_unowned_ones_are_left_alone(tmp_path):
    (tmp_path / "openllm-t-notmkdtemp-name").mkdir()  # not a name mkdtemp makes
    fresh = tmp_path / "openllm-t-abcd1234"
    fresh.mkdir()  # no owner file yet: someone is about to lock it
    assert clean_stale("openllm-t-", tmp_path) == []
    old = time.time() - 3600
    os.utime(fresh, (old, old))  # an hour without an owner: left over for good
    assert clean_stale("openllm-t-", tmp_path) == [fresh]
    assert (tmp_path / "openllm-t-notmkdtemp-name").is_dir()


def test_a_released_folder_can_be_renamed_into_place(tmp_path):
    with scratch_dir(".out.", tmp_path) as d:
        (d / "f").write_text("x")
        release(d)
        d.rename(tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["f"]
