"""`llm/malloc.py`: the local engine hands the C heap's freed memory back after each batch (glibc)."""

from __future__ import annotations

import ctypes
import subprocess
import sys
import textwrap

import pytest

from autointerp.llm import malloc


@pytest.fixture(autouse=True)
def _fresh_lookup():
    malloc.glibc.cache_clear()
    yield
    malloc.glibc.cache_clear()


class _FakeLibc:
    def __init__(self) -> None:
        self.calls: list[int] = []

        def trim(pad: int) -> int:
            self.calls.append(pad)
            return 1

        self.malloc_trim = trim


def test_no_op_without_glibc(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert malloc.glibc() is None
    assert malloc.trim() is None


def test_no_op_where_libc_has_no_malloc_trim(monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(ctypes, "CDLL", lambda name: object())  # e.g. musl: no malloc_trim
    assert malloc.trim() is None

    def missing(name: str):
        raise OSError(f"{name}: cannot open shared object file")

    malloc.glibc.cache_clear()
    monkeypatch.setattr(ctypes, "CDLL", missing)
    assert malloc.trim() is None


def test_libc_is_looked_up_once_and_trimmed_every_call(monkeypatch):
    opened: list[str] = []
    fake = _FakeLibc()

    def cdll(name: str) -> _FakeLibc:
        opened.append(name)
        return fake

    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(ctypes, "CDLL", cdll)
    took = [malloc.trim() for _ in range(3)]
    assert opened == ["libc.so.6"]
    assert fake.calls == [0, 0, 0]
    assert all(t is not None and t >= 0 for t in took)


def test_env_turns_it_off(monkeypatch):
    fake = _FakeLibc()
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(ctypes, "CDLL", lambda name: fake)
    monkeypatch.setenv(malloc.ENV, "0")
    assert malloc.trim() is None and fake.calls == []
    monkeypatch.setenv(malloc.ENV, "1")
    assert malloc.trim() is not None and fake.calls == [0]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_trim_returns_freed_arena_memory_to_the_system():
    """What the engine suffers, in miniature: after a 16 MB block is freed glibc serves 4 MB blocks
    from the heap, and those freed between live ones stay resident until trimmed."""
    if malloc.glibc() is None:
        pytest.skip("not glibc")
    code = textwrap.dedent(
        """
        import ctypes
        from autointerp.llm import malloc
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
        libc.free.argtypes = [ctypes.c_void_p]
        def rss():
            return next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmRSS:"))
        libc.free(libc.malloc(16 << 20))  # raises the dynamic mmap threshold to 16 MB
        blocks = [libc.malloc(4 << 20) for _ in range(64)]
        for b in blocks:
            ctypes.memset(b, 1, 4 << 20)
        for b in blocks[::2]:
            libc.free(b)
        before = rss()
        malloc.trim()
        print(before - rss())
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout) > 100 * 1024  # KB: most of the 128 MB freed
