"""Small shared helpers: the user-error type and atomic file output."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


class InputError(Exception):
    """Bad input from the user: the CLI prints ``str(err)`` as one line and exits with 2.

    The message must name the problem and the file it concerns.
    """


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    Nothing half-written is ever left at ``path``: on any exception the temporary file is
    removed and ``path`` keeps whatever it held before. ``suffix`` defaults to the suffix of
    ``path`` so that writers which pick a format from the extension still work.
    """
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise InputError(f"{path}: output folder {path.parent} does not exist")
    suffix = path.suffix if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield tmp
        if tmp.exists():  # mkstemp makes 0600 files; give the usual permissions
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
