"""alexnet.atomic: a reader sees the old file or the new one, and a failure leaves nothing behind."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from alexnet.atomic import atomic_path, write_text


def test_success_replaces_with_an_ordinary_file(tmp_path):
    target = tmp_path / "sub" / "a.json"
    write_text(target, "old")
    write_text(target, "new")
    assert target.read_text() == "new" and os.listdir(target.parent) == ["a.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600


def test_a_writer_that_renames_its_own_file_over_the_temporary_gets_an_ordinary_file(tmp_path):
    """safetensors (0.7 on) writes a 0600 file of its own and renames it over the path it is given;
    an exported model or a feature index must still be readable by others, as a checkpoint is."""
    from safetensors.torch import save_file

    target = tmp_path / "w.safetensors"
    with atomic_path(target) as tmp:
        save_file({"w": torch.zeros(2)}, str(tmp))
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask


def test_failure_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "m.safetensors"
    target.write_bytes(b"good")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half a fi")
        assert tmp.parent == tmp_path and tmp.name.startswith(".m.safetensors.") and tmp.name.endswith(".tmp")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"good" and sorted(os.listdir(tmp_path)) == ["m.safetensors"]


def test_a_writer_that_never_writes_still_leaves_no_temporary(tmp_path):
    with pytest.raises(KeyboardInterrupt), atomic_path(tmp_path / "x.png"):
        raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def test_an_unwritable_folder_is_named_by_the_file_asked_for(tmp_path, monkeypatch):
    """A read-only or full folder fails at the temporary file: the error names the file the user
    asked for (the CLI prints e.filename), not a hidden .NAME.XXXX.tmp, and nothing is written."""
    import errno
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / ".m.pt2.abc123.tmp"))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(OSError) as caught, atomic_path(tmp_path / "m.pt2"):
        pytest.fail("the block must not run")
    assert (caught.value.errno, caught.value.filename) == (errno.EROFS, str(tmp_path / "m.pt2"))
    assert list(tmp_path.iterdir()) == []


def test_a_folder_in_the_way_is_refused_before_writing(tmp_path):
    (tmp_path / "out.png").mkdir()
    with pytest.raises(IsADirectoryError) as e, atomic_path(tmp_path / "out.png"):
        pytest.fail("the writer ran")
    assert e.value.filename == str(tmp_path / "out.png") and os.listdir(tmp_path) == ["out.png"]


def test_a_failed_rename_names_the_file_asked_for_not_the_temporary(tmp_path):
    """A folder made at the path while the writer ran: the rename fails, and the user was told of
    '.out.png.k3j2x9.tmp', a file they never asked for and that is gone by then."""
    out = tmp_path / "out.png"
    with pytest.raises(IsADirectoryError) as e, atomic_path(out) as tmp:
        tmp.write_bytes(b"png")
        out.mkdir()
    assert e.value.filename == str(out) and os.listdir(tmp_path) == ["out.png"]


def test_a_file_in_the_way_of_a_folder_is_named(tmp_path):
    """--out a.tsv/m.onnx where a.tsv is a file said 'File exists (a.tsv)'."""
    (tmp_path / "a.tsv").write_text("x")
    with pytest.raises(NotADirectoryError) as e, atomic_path(tmp_path / "a.tsv" / "deeper" / "m.onnx"):
        pytest.fail("the writer ran")
    assert e.value.strerror == f"{tmp_path / 'a.tsv'} is a file, not a folder"


def test_check_writable_refuses_before_the_work_and_leaves_nothing(tmp_path, monkeypatch):
    """What commands call before their work (evaluate --out, features --out, predict --figure, ...):
    one ConfigError naming the option, for a file or a folder in the way or a read-only folder;
    a writable place is left as it was: no folder made, no file."""
    import errno
    import tempfile

    from alexnet.atomic import check_writable
    from alexnet.errors import ConfigError

    (tmp_path / "a.tsv").write_text("x")
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(ConfigError, match=r"^--out .*a\.tsv/x: cannot write there: .*a\.tsv is a file, not a folder$"):
        check_writable(tmp_path / "a.tsv" / "x", "--out", folder=True)
    with pytest.raises(ConfigError, match=r"^--figure .*dir\.png: cannot write there: a folder is in the way"):
        check_writable(tmp_path / "dir.png", "--figure")
    check_writable(tmp_path / "new" / "f.safetensors", "--out")
    check_writable(tmp_path / "new2", "--out", folder=True)
    assert sorted(os.listdir(tmp_path)) == ["a.tsv", "dir.png"]  # a failed command leaves no empty folders

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", "ignored")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(ConfigError, match=r"^--out .*new/i\.safetensors: cannot write there: Read-only file system$"):
        check_writable(tmp_path / "new" / "i.safetensors", "--out")


def test_signals_held_are_delivered_after_the_block():
    """A Ctrl-C or SIGTERM inside ``signals_held`` waits for the block's end, then reaches the handler
    it had; the handlers are put back."""
    import signal

    from alexnet.atomic import signals_held

    seen: list[int] = []
    before = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    before_int = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (a background job ignores it)
    try:
        done = []
        with pytest.raises(KeyboardInterrupt):
            with signals_held():
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGTERM)
                done.append(sum(range(1000)))  # bytecodes run after the signals: their handlers would have run here
                assert seen == []
        assert done == [499500] and seen == [signal.SIGTERM]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, before)
        signal.signal(signal.SIGINT, before_int)


@pytest.fixture
def file_size_limit():
    """Writes past 64 KiB fail with EFBIG, as past 'ulimit -f' (Python ignores SIGXFSZ), or as a
    full disk fails with ENOSPC: a real failed write(), not a mock."""
    import resource

    before = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, before[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, before)


def test_a_checkpoint_write_past_the_disk_says_why_and_keeps_the_old_file(tmp_path, file_size_limit):
    """torch.save turns a failed write() into '[enforce fail at inline_container.cc] unexpected pos':
    save_atomic gives the OSError behind it (what the CLI prints: 'File too large (PATH)'), not an
    'internal error', and the previous checkpoint stays byte for byte."""
    import errno

    from alexnet.checkpoint import save_atomic

    target = tmp_path / "last.pt"
    target.write_bytes(b"good checkpoint")
    with pytest.raises(OSError) as caught:
        save_atomic({"w": torch.zeros(100_000)}, target)  # 400 kB
    assert (caught.value.errno, caught.value.filename) == (errno.EFBIG, str(target))
    assert target.read_bytes() == b"good checkpoint" and os.listdir(tmp_path) == ["last.pt"]


def test_a_safetensors_write_past_the_disk_says_why_and_keeps_the_old_file(tmp_path, file_size_limit):
    """safetensors reports a failed write as a SafetensorError ('I/O error: File too large (os error
    27)'), which export and features showed as an internal error: it is the OSError, naming the file."""
    import errno

    from alexnet.atomic import write_safetensors

    target = tmp_path / "m.safetensors"
    target.write_bytes(b"good export")
    with pytest.raises(OSError) as caught:
        write_safetensors(target, {"w": torch.zeros(100_000)}, {"format": "x"})
    assert (caught.value.errno, caught.value.filename) == (errno.EFBIG, str(target))
    assert target.read_bytes() == b"good export" and os.listdir(tmp_path) == ["m.safetensors"]


def test_a_writer_out_of_room_is_named_by_the_file_asked_for(tmp_path):
    """matplotlib's savefig, torch.jit.save and onnx fail on a full disk with an OSError naming no
    file (evaluate --out printed only 'alexnet: error: File too large', not which of its four files):
    atomic_path names the file asked for, also for an error naming its hidden temporary; an error
    about another file (an input read inside the block) is left as it is."""
    import errno

    target = tmp_path / "confusion.png"
    with pytest.raises(OSError) as caught, atomic_path(target):
        raise OSError(errno.EFBIG, "File too large")
    assert (caught.value.errno, caught.value.filename) == (errno.EFBIG, str(target))
    with pytest.raises(OSError) as caught, atomic_path(target) as tmp:
        raise OSError(errno.EIO, "Input/output error", str(tmp))
    assert (caught.value.errno, caught.value.filename) == (errno.EIO, str(target))
    with pytest.raises(OSError) as caught, atomic_path(target):
        raise OSError(errno.ENOENT, "No such file or directory", "input.jpg")
    assert caught.value.filename == "input.jpg" and os.listdir(tmp_path) == []


@pytest.mark.parametrize("stem", ["a" * 240, "日" * 80])  # 252 and 252 bytes with the suffix: the file system takes them
def test_a_name_near_the_file_systems_limit_is_written(tmp_path, stem):
    """The temporary beside NAME is .NAME.XXXXXXXX.tmp, 14 bytes longer: 'export --out' a 252-byte
    name failed with 'File name too long' though the file system takes the name. The temporary's
    copy of NAME is cut (whole characters) to fit; the file is written and no temporary is left."""
    from alexnet.checkpoint import save_atomic

    if os.pathconf(tmp_path, "PC_NAME_MAX") != 255:
        pytest.skip("a file system whose names are not limited to 255 bytes")
    target = tmp_path / f"{stem}.safetensors"
    write_text(target, "new")
    save_atomic({"w": torch.zeros(2)}, target.with_suffix(".pt1"))
    assert target.read_text() == "new" and torch.load(target.with_suffix(".pt1"))["w"].tolist() == [0, 0]
    assert sorted(os.listdir(tmp_path)) == sorted([target.name, target.with_suffix(".pt1").name])
