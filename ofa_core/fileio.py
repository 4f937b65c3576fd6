"""Atomic file writes: a reader (or a run killed mid-write) never sees a half-written file.

Every artifact the library writes (checkpoints, weights, predictors, tables, caches, kept run records) goes
through `replacing`: the bytes land in a temporary file beside the target and one `os.replace` swaps it in.
"""
from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def replacing(path: str | os.PathLike, suffix: str = "") -> Iterator[str]:
    """Yield a temporary path beside `path`; when the block ends without an error the file written there
    replaces `path` in one step, otherwise it is removed and `path` is left as it was. `suffix` keeps an
    extension that a writer insists on (numpy's savez appends ".npz" to any other name)."""
    tmp = f"{os.fspath(path)}.tmp{os.getpid()}{suffix}"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def copy_replacing(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy `src` to `dst` atomically (one consistent file even while something else rewrites `src` by
    replacing it)."""
    with replacing(dst) as tmp:
        shutil.copyfile(src, tmp)


def write_text_replacing(path: str | os.PathLike, text: str) -> None:
    with replacing(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
