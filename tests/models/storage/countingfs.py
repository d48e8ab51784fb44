"""An in-memory fsspec filesystem that counts calls, for tests of remote I/O cost (``countmem://``)."""
from __future__ import annotations

from collections import Counter

import fsspec
from fsspec.implementations.memory import MemoryFileSystem


class CountingFileSystem(MemoryFileSystem):
    """``memory://`` plus a log: ``calls`` counts info/cat_file/open/ls, ``ranges`` the byte ranges read."""

    protocol = ("countmem",)
    calls: Counter = Counter()
    ranges: list = []
    fail: dict = {}  # method name -> number of calls that raise ConnectionResetError before succeeding;
    # "read_after": N makes the next opened file raise once N bytes have been read from it

    def _maybe_fail(self, name):
        if self.fail.get(name, 0) > 0:
            self.fail[name] -= 1
            raise ConnectionResetError(f"injected transient failure in {name}")

    def info(self, path, **kwargs):
        self.calls["info"] += 1
        self._maybe_fail("info")
        return super().info(path, **kwargs)

    def cat_file(self, path, start=None, end=None, **kwargs):
        self.calls["cat_file"] += 1
        self._maybe_fail("cat_file")
        data = super().cat_file(path, start=start, end=end, **kwargs)
        self.ranges.append((path, start, end, len(data)))
        return data

    def _open(self, path, mode="rb", **kwargs):
        self.calls["open"] += 1
        self._maybe_fail("open")
        f = super()._open(path, mode, **kwargs)
        if "r" in mode and "read_after" in self.fail:
            return _FailingReader(f, self.fail.pop("read_after"))
        return f

    def ls(self, path, detail=True, **kwargs):
        self.calls["ls"] += 1
        return super().ls(path, detail=detail, **kwargs)

    @classmethod
    def reset(cls):
        cls.calls.clear()
        cls.ranges.clear()
        cls.fail.clear()


fsspec.register_implementation("countmem", CountingFileSystem, clobber=True)


class _FailingReader:
    """A file that raises ConnectionResetError once more than ``limit`` bytes were asked of it."""

    def __init__(self, f, limit: int):
        self.f, self.limit, self.done = f, limit, 0

    def read(self, n=-1):
        if n is None or n < 0 or self.done + n > self.limit:
            raise ConnectionResetError(f"injected connection reset after {self.done} bytes")
        data = self.f.read(n)
        self.done += len(data)
        return data

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def __getattr__(self, name):
        return getattr(self.f, name)
