"""Outputs: atomic, never overwritten without --force, failures are one line and leave nothing.

Disk-full and permission errors are simulated by making the OS calls raise (the tests also run
as root, where a read-only folder would not stop a write).
"""

from __future__ import annotations

import errno
import os
import stat

import pytest
from PIL import Image

import oscar.io
from helpers import make_image
from oscar.cli import main
from oscar.errors import OutputError, OutputExistsError
from oscar.io import atomic_output, save_image, write_bytes_atomic


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".oscar-tmp-" in p.name)


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_interrupted_write_leaves_nothing(tmp_path):
    target = tmp_path / "out.oscar"
    for interruption in (RuntimeError("bug"), KeyboardInterrupt()):
        with pytest.raises(type(interruption)), atomic_output(target) as out:
            out.write(b"half a file")
            raise interruption
        assert not target.exists() and _leftovers(tmp_path) == []
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt), atomic_output(target, force=True) as out:
        out.write(b"new")
        raise KeyboardInterrupt
    assert target.read_bytes() == b"old" and _leftovers(tmp_path) == []


def test_disk_full_while_writing_bytes(tmp_path, monkeypatch):
    real = os.fdopen

    class HalfThenFull:
        def __init__(self, file):
            self.file = file

        def write(self, data):
            self.file.write(data[: len(data) // 2])
            _disk_full()

        def __getattr__(self, name):
            return getattr(self.file, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    monkeypatch.setattr(oscar.io.os, "fdopen", lambda *a, **k: HalfThenFull(real(*a, **k)))
    with pytest.raises(OutputError, match=r"out\.oscar: cannot write: No space left on device"):
        write_bytes_atomic(tmp_path / "out.oscar", b"x" * 100)
    assert list(tmp_path.iterdir()) == []


def test_disk_full_while_saving_an_image(tmp_path, monkeypatch):
    monkeypatch.setattr(Image.Image, "save", _disk_full)
    with pytest.raises(OutputError, match="No space left on device"):
        save_image(make_image(4, 4), tmp_path / "a.png")
    assert list(tmp_path.iterdir()) == []


def test_disk_full_on_flush_or_rename(tmp_path, monkeypatch):
    for name in ("_fsync", "os.replace"):
        with monkeypatch.context() as m:
            if name == "_fsync":
                m.setattr(oscar.io, "_fsync", _disk_full)
            else:
                m.setattr(oscar.io.os, "replace", _disk_full)
            with pytest.raises(OutputError, match="No space left"):
                write_bytes_atomic(tmp_path / "out.oscar", b"data")
        assert list(tmp_path.iterdir()) == []


def test_folder_not_writable(tmp_path, monkeypatch):
    (tmp_path / "a_file").write_bytes(b"")
    with pytest.raises(OutputError, match="cannot write"):
        write_bytes_atomic(tmp_path / "a_file" / "out.oscar", b"data")  # parent is a file

    def denied(path, flags, mode=0o777):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(oscar.io.os, "open", denied)
    with pytest.raises(OutputError, match=r"out\.oscar: cannot write: Permission denied"):
        write_bytes_atomic(tmp_path / "out.oscar", b"data")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_for_real(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="Permission denied"):
            write_bytes_atomic(folder / "out.oscar", b"data")
    finally:
        folder.chmod(0o700)


def test_outputs_get_ordinary_permissions(tmp_path):
    """mkstemp's 0600 must not survive the rename: outputs are 0666 minus the umask."""
    umask = os.umask(0o022)
    try:
        write_bytes_atomic(tmp_path / "a.oscar", b"data")
        save_image(make_image(4, 4), tmp_path / "a.png")
    finally:
        os.umask(umask)
    for name in ("a.oscar", "a.png"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644


def test_existing_outputs_and_directories(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(OutputExistsError, match="is a directory"):
        write_bytes_atomic(tmp_path / "out", b"data", force=True)
    (tmp_path / "x.oscar").write_bytes(b"keep")
    with pytest.raises(OutputExistsError, match="--force"):
        write_bytes_atomic(tmp_path / "x.oscar", b"new")
    assert (tmp_path / "x.oscar").read_bytes() == b"keep"


@pytest.fixture()
def three_files(tiny_codec, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a", "b", "c"):
        data = tiny_codec.compress(make_image(16, 16, seed=ord(name)), 0)
        (folder / f"{name}.oscar").write_bytes(data)
    return folder


def test_cli_disk_full_in_a_batch(tiny_model_dir, three_files, tmp_path, monkeypatch, capsys):
    real = os.replace

    def full_for_b(source, target):
        if ".b.png." in str(source):
            _disk_full()
        real(source, target)

    monkeypatch.setattr(oscar.io.os, "replace", full_for_b)
    out = tmp_path / "out"
    code = main(["decompress", str(three_files), "-o", str(out), "--model", str(tiny_model_dir)])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("oscar: error")]
    source, target = three_files / "b.oscar", out / "b.png"
    assert lines == [f"oscar: error: {source}: {target}: cannot write: No space left on device"]
    assert "1 of 3 files failed" in err
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "c.png"]


def test_cli_internal_error_in_a_batch(tiny_model_dir, three_files, tmp_path, monkeypatch, capsys):
    """A torch allocation failure on one file is one line and keeps the others."""
    from oscar.coding.codec import OscarCodec

    real = OscarCodec.decompress

    def broken_for_c(self, data, **options):  # options: decompress's steps
        if data == (three_files / "c.oscar").read_bytes():
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory")
        return real(self, data, **options)

    monkeypatch.setattr(OscarCodec, "decompress", broken_for_c)
    out = tmp_path / "out"
    code = main(["decompress", str(three_files), "-o", str(out), "--model", str(tiny_model_dir)])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert f"oscar: error: {three_files / 'c.oscar'}: out of memory (RuntimeError)" in err
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]
    assert len([line for line in err.splitlines() if line.startswith("oscar: error")]) == 1


def test_cli_refuses_existing_outputs_before_any_work(
    tiny_model_dir, three_files, tmp_path, capsys
):
    out = tmp_path / "out"
    out.mkdir()
    (out / "b.png").write_bytes(b"keep")
    args = ["decompress", str(three_files), "-o", str(out), "--model", str(tiny_model_dir)]
    assert main(args) == 1
    assert "output exists" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["b.png"]
    assert main([*args, "--force"]) == 0
    assert (out / "b.png").read_bytes()[:4] == b"\x89PNG"
    assert _leftovers(out) == []


def test_cli_os_errors_elsewhere_are_one_line(tmp_path, monkeypatch, capsys):
    """`oscar init` writes a directory of files: a full disk there is one line too."""
    import safetensors.torch

    from helpers import CONFIGS

    monkeypatch.setattr(safetensors.torch, "save_file", _disk_full)
    monkeypatch.setattr("oscar.store.pretrained.save_file", _disk_full)
    code = main(["init", str(CONFIGS / "tiny.json"), "-o", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert err.strip() == "oscar: error: No space left on device"
