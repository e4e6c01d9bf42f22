"""oscar.runtime.allocator: memory reuse on for ordinary sizes, glibc's default for very large
calls."""

from __future__ import annotations

import sys

import pytest

from oscar.runtime import allocator


class FakeLibc:
    def __init__(self):
        self.calls = []

    def mallopt(self, param, value):
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad):
        self.calls.append(("trim", pad))
        return 1


def test_reuse_switches_with_size(monkeypatch):
    fake = FakeLibc()
    monkeypatch.setattr(allocator, "_libc", fake)
    monkeypatch.setattr(allocator, "_reusing", None)
    allocator.allocator_for_pixels(768 * 512)
    assert fake.calls == [("mallopt", allocator._M_MMAP_MAX, 0)]
    allocator.allocator_for_pixels(1920 * 1088)  # still reuse: no call
    assert len(fake.calls) == 1
    allocator.allocator_for_pixels(3840 * 2176)
    assert fake.calls[1:] == [("mallopt", allocator._M_MMAP_MAX, 65536), ("trim", 0)]
    allocator.allocator_for_pixels(64 * 64)
    assert fake.calls[-1] == ("mallopt", allocator._M_MMAP_MAX, 0)


def test_without_tuning_nothing_happens(monkeypatch):
    monkeypatch.setattr(allocator, "_libc", None)
    allocator.allocator_for_pixels(10)  # no error, no effect
    monkeypatch.setenv("OSCAR_MALLOC_TUNING", "0")
    assert allocator.tune_cpu_allocator() is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_tuning_on_linux(monkeypatch):
    monkeypatch.setattr(allocator, "_libc", None)
    monkeypatch.setattr(allocator, "_reusing", None)
    monkeypatch.delenv("OSCAR_MALLOC_TUNING", raising=False)
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt  # noqa: B018
    except (OSError, AttributeError):
        pytest.skip("no glibc")
    assert allocator.tune_cpu_allocator() is True
    assert allocator._reusing is True
