"""Output files: checked before the work starts, written atomically, never left half-written.

Every command that writes a file checks its path with `check_output` first (so minutes of
simulation never end in "cannot write"), then writes it with `atomic_write`: the data goes
to a temporary file beside the target, which replaces the target only when complete; on any
failure — including Ctrl-C — the temporary file is removed and an existing target is left as
it was. Files get the user's umask, like any other output.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import MoeforgeError

__all__ = ["check_output", "atomic_write", "temporary_beside"]


def check_output(path: str | os.PathLike, option: str) -> Path:
    """`path` as a `Path` if a file can be written there, else `MoeforgeError` naming `option`."""
    p = Path(path)
    if p.is_dir():
        raise MoeforgeError(f"{option} {path}: is a folder, not a file")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise MoeforgeError(f"{option} {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise MoeforgeError(f"{option} {path}: folder {parent} is not writable")
    if p.exists() and not os.access(p, os.W_OK):
        raise MoeforgeError(f"{option} {path}: the file is not writable")
    return p


@contextlib.contextmanager
def temporary_beside(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """A temporary file name beside `path`; it replaces `path` when the block ends normally and
    is removed whatever happens. `suffix` lets writers that add an extension (``np.save``)
    write to exactly this name."""
    p = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{p.name}.", suffix=f".tmp{suffix}", dir=p.parent or ".")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)      # mkstemp makes 0600; outputs follow the umask
        os.replace(tmp, p)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], *, suffix: str = "") -> None:
    """Call ``write(tmp)`` and move `tmp` onto `path`; see `temporary_beside`."""
    try:
        with temporary_beside(path, suffix) as tmp:
            write(tmp)
    except OSError as exc:
        raise MoeforgeError(f"cannot write {path}: {exc.strerror or exc}") from None
