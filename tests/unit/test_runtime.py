"""runtime: the malloc-arena limit that segmentation sets (glibc only)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from cellcut import runtime

glibc = pytest.mark.skipif(runtime._glibc() is None, reason="glibc's mallopt/malloc_stats only")

# Eight threads allocate at the same moment; glibc's malloc_stats() prints one "Arena N:" line
# per arena in use.
ARENAS_AFTER_THREADS = textwrap.dedent(
    """
    import ctypes, sys, threading
    import numpy as np
    if sys.argv[1] == "limit":
        from cellcut.runtime import limit_malloc_arenas
        limit_malloc_arenas()
    barrier = threading.Barrier(8)
    def work():
        barrier.wait()
        blocks = [np.ones(10_000) for _ in range(10)]
        del blocks
    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ctypes.CDLL("libc.so.6").malloc_stats()
    """
)


def arenas(mode: str, **env: str) -> int:
    environ = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    proc = subprocess.run(
        [sys.executable, "-c", ARENAS_AFTER_THREADS, mode],
        capture_output=True,
        text=True,
        env={**environ, **env},
        check=True,
    )
    return sum(line.startswith("Arena ") for line in proc.stderr.splitlines())


@glibc
def test_limit_caps_the_arenas_that_threads_create():
    assert arenas("none") > runtime.ARENAS  # glibc's default: one arena per busy thread
    assert arenas("limit") <= runtime.ARENAS


@glibc
def test_a_users_malloc_arena_max_is_left_alone(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    runtime.limit_malloc_arenas.cache_clear()
    try:
        assert runtime.limit_malloc_arenas() is False
    finally:
        runtime.limit_malloc_arenas.cache_clear()


def test_segment_sets_the_limit_first(monkeypatch):
    import numpy as np

    from cellcut.segmentation import pipeline

    calls = []
    monkeypatch.setattr(pipeline, "limit_malloc_arenas", lambda: calls.append(1))
    with pytest.raises(Exception):  # noqa: B017 - any refusal; the limit came before it
        pipeline.segment(np.zeros((2, 2)), None)
    assert calls == [1]
