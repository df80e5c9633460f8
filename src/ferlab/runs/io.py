"""Atomic writes: a reader (or a kill) never sees a half-written file, and a full disk is one clear error."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from ferlab.errors import DiskFull

FULL = (errno.ENOSPC, errno.EDQUOT)


def _free(directory: Path) -> int:
    return shutil.disk_usage(directory).free


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f}" if n < 10e6 else f"{n / 1e6:.0f}"


def disk_full(error: BaseException, directory: Path, needed: int = 0) -> bool:
    """Whether `error` (or one it arose from) means the filesystem is full. torch's writer reports a full disk as
    a RuntimeError ("file write failed", "unexpected pos"), so for those the free space decides."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in FULL:
            return True
        seen = seen.__cause__ or seen.__context__
    return isinstance(error, RuntimeError) and _free(directory) < max(needed, 1 << 20)


def _full_error(path: Path, needed: int, free: int) -> DiskFull:
    return DiskFull(f"no space left on device writing {path} (about {_mb(needed)} MB needed, {_mb(free)} MB free)")


@contextlib.contextmanager
def atomic_path(path: str | Path, size: int | None = None) -> Iterator[Path]:
    """A temporary file beside `path` to write; on a clean exit it is fsynced and renamed over `path`, on an
    error removed. It ends in `path`'s suffix, so writers that pick the format from it (np.savez, cv2) work.

    size: the bytes the file will take, when the writer knows (a checkpoint's tensors): a filesystem with less
    free space fails before writing. Either way a full disk raises `DiskFull` naming the file, and the file that
    was at `path` before is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    free = _free(path.parent)  # before writing: the failed write's file may stay allocated while its handle lives
    if size is not None and free < size:
        raise _full_error(path, size, free)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException as e:
        written = tmp.stat().st_size if tmp.exists() else 0
        tmp.unlink(missing_ok=True)
        needed = max(size or 0, written, path.stat().st_size if path.exists() else 0)  # the previous version's size
        if isinstance(e, Exception) and not isinstance(e, DiskFull) and disk_full(e, path.parent, needed):
            raise _full_error(path, needed, free) from None
        raise


def remove_temporaries(directory: str | Path, suffix: str) -> None:
    """Delete what writes of `*<suffix>` files killed outright (SIGKILL) left in `directory`: their temporaries
    (`atomic_path` names them `.<name>.<random><suffix>`); a process that is not killed removes its own."""
    for tmp in Path(directory).glob(f".*{suffix}"):
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, write: Callable[[Path], None], size: int | None = None) -> Path:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it over `path` (see `atomic_path`)."""
    with atomic_path(path, size) as tmp:
        write(tmp)
    return Path(path)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write text atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))
