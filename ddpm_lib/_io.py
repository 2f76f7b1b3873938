"""Writing files so that a reader never sees half of one, nothing is overwritten by accident, and two
processes never train in the same folder: the library's only file writer, its output check and its lock.

:func:`atomic_write_bytes` writes next to the destination under a temporary name,
flushes, and moves the file into place with ``os.replace``; an interrupted write
(Ctrl-C, a full disk, a crash) leaves the old file, or none, never a partial one.
Every file the library writes (checkpoints, training states, the classifier,
reports, images, the numerics cache) goes through it.

:func:`check_output_paths` decides, before any work starts, whether every output of
a command can be written and may be: a folder where a file is wanted, a missing
or unwritable folder, the same file named twice, an input that would be
overwritten, or a file that exists (without ``force``) is one clear error, not a
traceback after minutes of sampling or training.

:class:`RunLock` holds a run folder for one process: a second process that tries
to train in it is refused with the first one's pid.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; the lock is then advisory only (see RunLock)
    fcntl = None


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same folder + ``os.replace``); returns the path.

    The parent folder is created if missing. The file gets the usual permissions
    (0666 less the umask), not the 0600 of a temporary file. A failure (a full
    disk, a folder one may not write in) raises :class:`OSError` naming ``path``
    itself, with the old file, if any, intact.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise _naming(e, path) from e
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise _naming(e, path) from e
        raise
    return path


def _naming(e: OSError, path: Path) -> OSError:
    """``e`` as an OSError about ``path`` (a write fails in its temporary file, whose name means nothing to a reader)."""
    if e.errno is None:
        return e
    return OSError(e.errno, e.strerror or str(e), str(path))


def stale_temporaries(folder: str | os.PathLike, pattern: str = ".*.tmp") -> list[Path]:
    """Temporary files that :func:`atomic_write_bytes` left in ``folder`` when its process was killed outright."""
    folder = Path(folder)
    return sorted(folder.glob(pattern)) if folder.is_dir() else []


# --------------------------------------------------------------------------- outputs, checked before any work

class OutputPathError(ValueError):
    """An output a command cannot write, or must not (it would destroy a file it did not write)."""


@dataclass(frozen=True)
class Output:
    """One thing a command writes: a file, or a folder it writes into (``folder``).

    ``option`` names it in messages (``"--out"``). ``updates``: the command reads it
    and writes it again by design (an evaluate report it resumes, a training run's
    own folder and files), so that it exists is no reason to refuse it.
    """

    option: str
    path: str | os.PathLike
    folder: bool = False
    updates: bool = False


def check_output_paths(outputs: list[Output], inputs: dict[str, str | os.PathLike] | None = None,
                       force: bool = False) -> None:
    """Refuse, before any work, outputs that would fail to be written or would destroy something.

    Each output must be writable: a file is not a folder, and the nearest folder
    above it that exists is a folder this process can create files in (missing
    folders are created when the file is written); a folder output is not a file.
    No two outputs may be the same file, and no output may be one of the
    ``inputs`` (``{option: path}``; the same file through a link counts). An
    output file that exists is refused unless ``force`` or its ``updates`` says
    the command rewrites it by design. Raises :class:`OutputPathError` with one
    line that says what is wrong and what to do.
    """
    seen: dict[tuple, str] = {}
    for option, path in (inputs or {}).items():
        if path is not None:
            seen.setdefault(_identity(Path(path)), option)
    for out in outputs:
        path = Path(out.path)
        key = _identity(path)
        if key in seen:
            other = seen[key]
            reads = other in (inputs or {})
            raise OutputPathError(f"{out.option} {path} is the file {other} reads: writing it would destroy it; give "
                                  "another name" if reads else
                                  f"{out.option} {path} is also where {other} goes: give each its own name")
        seen[key] = out.option
        (_check_folder if out.folder else _check_file)(out, path, force)


def _identity(path: Path) -> tuple:
    """What makes two paths the same file: the device and inode of one that exists, else its resolved path."""
    try:
        st = path.stat()
        return ("inode", st.st_dev, st.st_ino)
    except OSError:
        return ("path", os.path.realpath(path))


def _check_file(out: Output, path: Path, force: bool) -> None:
    if path.is_dir():
        raise OutputPathError(f"{out.option} {path} is a folder: give the name of a file to write "
                              f"(e.g. {path / ('out' + (path.suffix or ''))})")
    if path.exists() and not (force or out.updates):
        raise OutputPathError(f"{out.option} {path} already exists: pass --force to replace it, or give another "
                              "name")
    _check_writable(out, path.parent)


def _check_folder(out: Output, path: Path, force: bool) -> None:
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{out.option} {path} is a file, not a folder: give a folder (it is created if missing)")
    _check_writable(out, path)


def _check_writable(out: Output, folder: Path) -> None:
    """The folder a file will be created in, or the nearest one above it that exists, takes new files."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputPathError(f"{out.option} {out.path}: {existing} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):   # leaves nothing behind, even if killed
            pass
    except OSError as e:
        raise OutputPathError(f"{out.option} {out.path}: cannot create files in {existing} "
                              f"({e.strerror or e}); choose a folder you can write to") from None


# --------------------------------------------------------------------------- a run folder's lock

class RunLockedError(RuntimeError):
    """Another process holds the run folder's lock."""


LOCK_FILE = ".lock"
_held: dict[Path, list] = {}       # folder -> [open lock file, depth]: this process's locks (re-entrant)


class RunLock:
    """``with RunLock(folder):`` -- this process alone writes in ``folder`` until the block ends.

    The lock is ``flock`` on ``folder/.lock`` (holding the holder's pid; removed when the
    block ends), so it also ends with its process, even one killed outright: a lock file
    left behind then is not locked, and never needs deleting. A second process is refused
    at once with :class:`RunLockedError` naming the first one's pid. The same process may
    take the lock again (the command line holds it from before loading the data, the
    training loop again around its steps). ``folder`` is created if missing. Where the
    system has no ``flock`` (Windows) the lock does nothing.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self._key = Path(os.path.abspath(self.folder))

    def __enter__(self) -> "RunLock":
        held = _held.get(self._key)
        if held is not None:
            held[1] += 1
            return self
        if self.folder.exists() and not self.folder.is_dir():
            raise RunLockedError(f"{self.folder} is a file, not a run folder")
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            f = open(self.path, "a+")
            if fcntl is None:
                break
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.seek(0)
                pid = f.read().strip() or "unknown"
                f.close()
                raise RunLockedError(
                    f"{self.folder} is in use by another training process (pid {pid}): two runs in one folder "
                    "would overwrite each other's files. Wait for it to finish or stop it (Ctrl-C), or train in "
                    "another folder") from None
            if _same_file(f, self.path):
                break
            f.close()          # its holder removed it as we opened it: lock the file that is there now
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        _held[self._key] = [f, 1]
        return self

    def __exit__(self, *exc) -> None:
        held = _held[self._key]
        held[1] -= 1
        if held[1] == 0:
            del _held[self._key]
            self.path.unlink(missing_ok=True)   # while still locked: a process that opened it sees it is gone
            held[0].close()                      # closing the file releases the flock


def _same_file(f, path: Path) -> bool:
    try:
        return os.fstat(f.fileno()).st_ino == path.stat().st_ino
    except FileNotFoundError:
        return False
