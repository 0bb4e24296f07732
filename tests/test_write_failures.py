"""Writing files: a full disk, a missing permission or a read-only file system ends in ONE line naming
the path (never a chained traceback, never a half-written or temporary file left behind), and the
files the code writes get the mode the umask gives (mkstemp's 0600 kept lab mates out of shared folders).

Tests run as root here, where file modes do not stop writes: permission and space errors are raised
in-process with monkeypatch, and a full or read-only disk is a small real tmpfs (skipped where mount
is not permitted).
"""
import contextlib
import errno
import hashlib
import io
import os
import subprocess
import sys

import pytest
import torch

from datagen import make_dataset
from helpers import run_cli
from dpl.clip import weights
from dpl.data.datasets.fewshot_cache import write_portable_cache
from dpl.data.datasets.splits import save_split
from dpl.engine.runtime import LOCK_NAME, RunLock
from dpl.project import PROJECT_ROOT
from dpl.utils import UnwritableFileError, UserError, atomic_open, close_logger, setup_logger, write_json

import dpl.tools.train as TRAIN

NO_SPACE = os.strerror(errno.ENOSPC)
READ_ONLY = os.strerror(errno.EROFS)
DENIED = os.strerror(errno.EACCES)
LOG_WARNING = "Warning: cannot write {path} ({reason}): log lines from here on are only on the console"
CONFIG = PROJECT_ROOT / "configs/trainers/CoOp/vit_b16_ep50_ctxv1.yaml"
DTD_CONFIG = PROJECT_ROOT / "configs/datasets/dtd.yaml"


# ----- helpers and fixtures -------------------------------------------------------------------------
def os_error(code, path=None):
    return OSError(code, os.strerror(code), *([str(path)] if path is not None else []))


def patch_os(monkeypatch, name, code, only_under=None):
    """Make ``os.<name>`` fail with ``code`` (on paths under ``only_under`` when given)."""
    real = getattr(os, name)

    def fail(*args, **kwargs):
        path = args[0] if args and isinstance(args[0], (str, os.PathLike)) else None
        if only_under is not None and not str(path).startswith(str(only_under)):
            return real(*args, **kwargs)
        raise os_error(code, path)

    monkeypatch.setattr(os, name, fail)


@contextlib.contextmanager
def umask(mask):
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def mode_of(path):
    return os.stat(path).st_mode & 0o777


def leftovers(folder):
    """Temporary files anywhere under ``folder``."""
    return [os.path.join(d, f) for d, _, files in os.walk(folder) for f in files
            if f.endswith((".tmp", ".part"))]


def _run(*command):
    return subprocess.run(command, capture_output=True, text=True)


@pytest.fixture
def disk(tmp_path):
    """A fresh 4 MiB tmpfs under ``tmp_path`` (``fill`` makes it full)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    try:
        done = _run("mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point))
    except FileNotFoundError:
        pytest.skip("no mount command here: cannot test on a real full disk")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {' '.join(done.stderr.split())}")
    try:
        yield mount_point
    finally:
        close_logger()  # the log file must be closed before the disk goes away
        if _run("umount", str(mount_point)).returncode != 0:
            _run("umount", "-l", str(mount_point))


def fill(disk, leave_bytes=0):
    """Take all free space of ``disk`` but ``leave_bytes``."""
    stats = os.statvfs(disk)
    free = stats.f_bavail * stats.f_frsize
    with open(disk / "filler", "ab") as f:
        f.write(b"\0" * max(free - leave_bytes, 0))


def make_read_only(disk):
    done = _run("mount", "-o", "remount,ro", str(disk))
    if done.returncode != 0:
        pytest.skip(f"cannot remount the tmpfs read-only here: {' '.join(done.stderr.split())}")


def assert_one_line(text):
    assert text and "\n" not in text.rstrip("\n"), f"not one line: {text!r}"


# ----- atomic_open and write_json ------------------------------------------------------------------
def test_full_disk_keeps_the_previous_file_byte_identical(disk):
    target = disk / "results.json"
    target.write_bytes(b"previous contents\n")
    fill(disk)
    with pytest.raises(UnwritableFileError) as caught:
        with atomic_open(target, "wb") as f:
            f.write(os.urandom(256 * 1024))
    assert str(caught.value) == f"Cannot write {target}: {NO_SPACE}; the previous results.json is kept"
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
    assert isinstance(caught.value, UserError) and isinstance(caught.value, OSError)
    assert target.read_bytes() == b"previous contents\n"
    assert sorted(os.listdir(disk)) == ["filler", "results.json"]


def test_full_disk_on_a_new_file_leaves_nothing(disk):
    target = disk / "sub" / "model.pth.tar-1"
    fill(disk)
    with pytest.raises(UnwritableFileError, match=r"; nothing was written$") as caught:
        with atomic_open(target, "wb") as f:
            torch.save({"weights": torch.zeros(64 * 1024)}, f)
    assert_one_line(str(caught.value))
    assert str(caught.value).startswith(f"Cannot write {target}: {NO_SPACE}")
    assert not target.exists() and leftovers(disk) == []


def test_write_json_on_a_full_disk(disk):
    target = disk / "split.json"
    fill(disk)
    with pytest.raises(UnwritableFileError) as caught:
        write_json({"rows": ["x" * 100] * 1000}, target)
    assert str(caught.value) == f"Cannot write {target}: {NO_SPACE}; nothing was written"
    assert not target.exists() and leftovers(disk) == []


def test_read_only_file_system(disk):
    target = disk / "results.json"
    target.write_text("{}")
    make_read_only(disk)
    with pytest.raises(UnwritableFileError) as caught:
        write_json({"accuracy": 1.0}, target)
    assert str(caught.value) == f"Cannot write {target}: {READ_ONLY}; the previous results.json is kept"


@pytest.mark.parametrize("step", ["open", "fsync", "replace"])
@pytest.mark.parametrize("existed", [True, False])
def test_each_failing_step_is_one_line_and_leaves_no_temp_file(tmp_path, monkeypatch, step, existed):
    target = tmp_path / "results.json"
    if existed:
        target.write_text('{"old": true}')
    patch_os(monkeypatch, step, errno.ENOSPC, only_under=tmp_path if step == "open" else None)
    with pytest.raises(UnwritableFileError) as caught:
        write_json({"new": True}, target)
    left = "the previous results.json is kept" if existed else "nothing was written"
    assert str(caught.value) == f"Cannot write {target}: {NO_SPACE}; {left}"
    monkeypatch.undo()
    assert os.listdir(tmp_path) == (["results.json"] if existed else [])
    if existed:
        assert target.read_text() == '{"old": true}'


def test_folder_that_cannot_be_created(tmp_path, monkeypatch):
    target = tmp_path / "new" / "results.json"
    patch_os(monkeypatch, "mkdir", errno.EACCES)
    with pytest.raises(UnwritableFileError) as caught:
        write_json({}, target)
    assert str(caught.value) == f"Cannot write {target}: {DENIED}; nothing was written"


@pytest.mark.parametrize("error", [ValueError("not JSON"), KeyboardInterrupt()])
def test_other_exceptions_propagate_unchanged_and_clean_up(tmp_path, error):
    target = tmp_path / "model.pth.tar-1"
    target.write_bytes(b"old")
    with pytest.raises(type(error)) as caught:
        with atomic_open(target, "wb") as f:
            f.write(b"half")
            raise error
    assert caught.value is error
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["model.pth.tar-1"]


def test_a_pickling_error_inside_torch_save_propagates_unchanged(tmp_path):
    target = tmp_path / "model.pth.tar-1"
    with pytest.raises(Exception) as caught:
        with atomic_open(target, "wb") as f:
            torch.save({"not picklable": lambda: None}, f)
    assert not isinstance(caught.value, UserError)
    assert os.listdir(tmp_path) == []


def test_an_error_about_another_file_keeps_its_own_message(tmp_path):
    """Copying a checkpoint: a missing source is not a failure to write the copy."""
    source = tmp_path / "missing.pth.tar"
    with pytest.raises(FileNotFoundError) as caught:
        with atomic_open(tmp_path / "model-best.pth.tar", "wb") as dst, open(source, "rb") as src:
            dst.write(src.read())
    assert not isinstance(caught.value, UserError) and caught.value.filename == str(source)
    assert os.listdir(tmp_path) == []


def test_split_file_write_failure_is_one_line(tmp_path, monkeypatch):
    split = tmp_path / "split_zhou_DescribableTextures.json"
    patch_os(monkeypatch, "fsync", errno.EDQUOT)
    with pytest.raises(UnwritableFileError) as caught:
        save_split([], [], [], str(split), str(tmp_path))
    assert str(caught.value) == f"Cannot write {split}: {os.strerror(errno.EDQUOT)}; nothing was written"


def test_fewshot_cache_on_a_full_disk_prints_a_line_and_goes_on(tmp_path, monkeypatch, capsys):
    path = tmp_path / "split_fewshot" / "shot_2-seed_1.json"
    patch_os(monkeypatch, "fsync", errno.ENOSPC)
    write_portable_cache(str(path), str(tmp_path), 2, 1, "key", [], None)
    out = capsys.readouterr().out
    assert_one_line(out)
    assert str(path) in out and NO_SPACE in out and "drawn again next time" in out
    monkeypatch.undo()
    assert os.listdir(path.parent) == []


# ----- file modes follow the umask -------------------------------------------------------------------
def _write_all_kinds(folder, monkeypatch):
    """Write one file through each path the code uses; returns them."""
    with atomic_open(folder / "model.pth.tar-1", "wb") as f:
        torch.save({"x": torch.zeros(2)}, f)
    write_json({"accuracy": 1.0}, folder / "results.json")
    cache = folder / "split_fewshot" / "shot_1-seed_1.json"
    write_portable_cache(str(cache), str(folder), 1, 1, "key", [], None)
    payload = b"clip weights"
    monkeypatch.setattr(weights.urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(payload))
    download = weights.download_verified("https://example.invalid/ViT-B-16.pt", folder / "clip" / "ViT-B-16.pt",
                                         hashlib.sha256(payload).hexdigest())
    return [folder / "model.pth.tar-1", folder / "results.json", cache, download]


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, monkeypatch, mask, expected):
    with umask(mask):
        written = _write_all_kinds(tmp_path, monkeypatch)
        lock = RunLock(str(tmp_path / "run"))
        lock.acquire()
        lock_mode = mode_of(lock.path)
        lock.release()
    assert {str(path): mode_of(path) for path in written} == {str(path): expected for path in written}
    assert lock_mode == expected
    assert leftovers(tmp_path) == []


# ----- the log -------------------------------------------------------------------------------------
def test_log_on_a_full_disk_warns_once_and_keeps_printing(disk, capsys):
    log = setup_logger(str(disk / "out"))
    print("before the disk is full")
    fill(disk)
    lines = [f"line {i:05d} " + "x" * 60 for i in range(2000)]  # far more than the log file's last page
    try:
        for line in lines:
            print(line)
        print("to stderr", file=sys.stderr)
        sys.stdout.flush()
    finally:
        close_logger()
    captured = capsys.readouterr()
    warning = LOG_WARNING.format(path=log, reason=NO_SPACE)
    console = captured.out + captured.err
    assert console.count("Warning: cannot write") == 1 and warning + "\n" in console
    assert all(line in captured.out for line in (lines[0], lines[-1])) and "to stderr" in captured.err
    with open(log) as f:
        assert f.read().startswith("before the disk is full\n")


def test_log_fsync_failure_warns_once(tmp_path, monkeypatch, capsys):
    log = setup_logger(str(tmp_path))
    patch_os(monkeypatch, "fsync", errno.EIO)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        print("still on the console")
    finally:
        close_logger()
    captured = capsys.readouterr()
    warning = LOG_WARNING.format(path=log, reason=os.strerror(errno.EIO))
    assert (captured.out + captured.err).count(warning) == 1 and "still on the console" in captured.out


def test_setup_logger_in_a_folder_that_cannot_be_created(tmp_path, monkeypatch):
    out = tmp_path / "out"
    patch_os(monkeypatch, "mkdir", errno.EACCES)
    with pytest.raises(UnwritableFileError) as caught:
        setup_logger(str(out))
    assert str(caught.value) == f"Cannot write {out / 'log.txt'}: {DENIED}; nothing was written"


def test_setup_logger_on_a_read_only_disk(disk):
    out = disk / "out"
    out.mkdir()
    (out / "log.txt").write_text("an earlier session\n")
    make_read_only(disk)
    with pytest.raises(UnwritableFileError) as caught:
        setup_logger(str(out))
    assert str(caught.value) == f"Cannot write {out / 'log.txt'}: {READ_ONLY}; the previous log.txt is kept"
    assert not hasattr(sys.stdout, "log_file")  # nothing is teed


# ----- the run lock ----------------------------------------------------------------------------------
def test_run_lock_on_a_full_disk(disk):
    out = disk / "out"
    out.mkdir()
    fill(disk)
    lock = RunLock(str(out))
    with pytest.raises(UserError) as caught:
        lock.acquire()
    assert str(caught.value) == f"Cannot create the run lock {out / LOCK_NAME}: {NO_SPACE}; nothing was written"
    assert os.listdir(out) == []


def test_run_lock_on_a_read_only_disk(disk):
    make_read_only(disk)
    out = disk / "out"
    with pytest.raises(UserError) as caught:
        RunLock(str(out)).acquire()
    assert str(caught.value) == f"Cannot create the run lock {out / LOCK_NAME}: {READ_ONLY}; nothing was written"


class _FailingClose(io.StringIO):
    """A file that takes the lock's text and fails to write it out when closed, as on a full disk."""

    def __init__(self, fd):
        super().__init__()
        os.close(fd)

    def close(self):
        super().close()
        raise os_error(errno.ENOSPC)


@pytest.mark.parametrize("step", ["link", "write"])
def test_run_lock_failing_steps_leave_no_temp_file(tmp_path, monkeypatch, step):
    if step == "write":  # json.dump's buffered write fails when the file is closed
        monkeypatch.setattr(os, "fdopen", lambda fd, mode: _FailingClose(fd))
    else:
        patch_os(monkeypatch, step, errno.ENOSPC)
    with pytest.raises(UserError, match=rf"^Cannot create the run lock .*{NO_SPACE}; nothing was written$"):
        RunLock(str(tmp_path)).acquire()
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []


# ----- train.py end to end ---------------------------------------------------------------------------
def argv_for(root, out, weights_path):
    return [
        "--root", str(root), "--seed", "1", "--trainer", "CoOp", "--output-dir", str(out),
        "--dataset-config-file", str(DTD_CONFIG), "--config-file", str(CONFIG),
        "MODEL.BACKBONE.PATH", str(weights_path), "INPUT.SIZE", "(32, 32)", "DATALOADER.NUM_WORKERS", "0",
        "USE_CUDA", "False", "OPTIM.MAX_EPOCH", "1",
    ]


@pytest.fixture
def quick_env_info(monkeypatch):
    """torch's environment report is slow and not under test here."""
    monkeypatch.setattr(TRAIN, "collect_env_info", lambda: "(environment not collected in this test)")


def test_train_with_a_disk_full_at_the_checkpoint(disk, tmp_path, tiny_clip_path, monkeypatch, capsys,
                                                  quick_env_info):
    """Epoch 1's checkpoint is written, epoch 2's hits a full disk: one line naming the file and the kept
    checkpoint; once there is room again, the same command continues from epoch 1 and finishes."""
    root = tmp_path / "data"
    make_dataset(root, "dtd", n_classes=4, per_class=6)
    out = disk / "out"
    argv = argv_for(root, out, tiny_clip_path) + ["OPTIM.MAX_EPOCH", "2"]
    real_save = torch.save
    saves = []

    def save_on_a_full_disk(obj, f, *args, **kwargs):
        saves.append(1)
        if len(saves) == 2:
            fill(disk, leave_bytes=16 * 1024)  # room for the last log lines, not for a checkpoint
        return real_save(obj, f, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", save_on_a_full_disk)
        code, err = run_cli(argv, capsys)
    checkpoint = out / "prompt_learner" / "model.pth.tar-2"
    kept = out / "prompt_learner" / "model-last.pth.tar"
    assert code == TRAIN.EXIT_RUN_ERROR
    assert err == (f"Error: Cannot write {checkpoint}: {NO_SPACE}; nothing was written. Training stopped in epoch "
                   f"2: the last checkpoint {kept} is kept; make room and run the same command again to continue\n")
    assert leftovers(out) == [] and not (out / LOCK_NAME).exists()
    assert f"Error: Cannot write {checkpoint}" in (out / "log.txt").read_text()

    os.remove(disk / "filler")
    code, err = run_cli(argv, capsys)
    assert code == 0, err
    log = (out / "log.txt").read_text()
    assert f'Loading checkpoint from "{kept}"' in log and "Previous epoch: 1" in log
    assert checkpoint.is_file() and not kept.exists()  # the numbered checkpoint supersedes the last one


@pytest.mark.parametrize("error, line", [
    (os_error(errno.ENOSPC, "/data/out/cmat.pt"), f"Error: Cannot write /data/out/cmat.pt: {NO_SPACE}"),
    (os_error(errno.EDQUOT, "/data/out/x"), f"Error: Cannot write /data/out/x: {os.strerror(errno.EDQUOT)}"),
    (os_error(errno.EROFS), f"Error: {READ_ONLY}"),
    (os_error(errno.EACCES, "/data/out"), f"Error: [Errno {errno.EACCES}] {DENIED}: '/data/out'"),
])
def test_train_prints_a_plain_disk_error_as_one_line(tmp_path, tiny_clip_path, monkeypatch, capsys, error, line):
    def main(args, cfg, stops=None, world=None):
        raise error

    monkeypatch.setattr(TRAIN, "main", main)
    code, err = run_cli(argv_for(tmp_path, tmp_path / "out", tiny_clip_path), capsys)
    assert (code, err) == (TRAIN.EXIT_RUN_ERROR, line + "\n")


def test_train_keeps_the_traceback_of_other_os_errors(tmp_path, tiny_clip_path, monkeypatch):
    def main(args, cfg, stops=None, world=None):
        raise os_error(errno.ECONNRESET)

    monkeypatch.setattr(TRAIN, "main", main)
    with pytest.raises(ConnectionResetError):
        TRAIN.cli(argv_for(tmp_path, tmp_path / "out", tiny_clip_path))
