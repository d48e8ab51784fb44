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
    fail: dict = {}  # method name -> number of calls that raise ConnectionError before succeeding

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
        return super()._open(path, mode, **kwargs)

    def ls(self, path, detail=True, **kwargs):
        self.calls["ls"] += 1
        return super().ls(path, detail=detail, **kwargs)

    @classmethod
    def reset(cls):
        cls.calls.clear()
        cls.ranges.clear()
        cls.fail.clear()


fsspec.register_implementation("countmem", CountingFileSystem, clobber=True)
