"""Atomic file writes (a file is either the old one or the complete new one, never half-written), file
digests, exclusive locks on run folders, and hidden working folders that a killed process leaves to be cleaned."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from rkd.errors import UsageError

logger = logging.getLogger(__name__)


def default_mode(directory: bool = False) -> int:
    """The permission bits a plain ``open``/``mkdir`` would give under the current umask (temp files get 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, fsync it, then ``os.replace`` it in place."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.chmod(tmp_path, default_mode())
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    return target


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) atomically."""
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_dir(directory: str | Path) -> None:
    """Make a rename inside ``directory`` durable; a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def try_lock(path: str | Path) -> IO[str] | None:
    """Open ``path`` (created when missing) and take an exclusive, non-blocking ``flock`` on it.

    Returns the open file, which holds the lock until it is closed (or the process ends), or None when another
    process holds it.
    """
    import fcntl

    fh = open(path, "a")  # noqa: SIM115 - the caller holds it open for as long as the lock is needed
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        return None
    return fh


#: What a :func:`scratch_dir` may be for; :func:`sweep_scratch` removes nothing else.
SCRATCH_KINDS = ("staging", "export", "quantize", "trt", "old")
#: Working folders of older rkd versions, which had no lock file: reported by :func:`sweep_scratch`, never removed.
LEGACY_SCRATCH = (".{stem}.*.staging", ".{stem}.*.export", ".{stem}.*.old", ".{stem}.trt-*", ".rkd-quantize-*")
_TOKEN = re.compile(r"^[a-z0-9_]{8}$")  # tempfile.mkstemp's random part


def _held_lock(parent: Path, stem: str) -> tuple[IO[str], Path]:
    """A new lock file ``parent/.{stem}.{token}.lock``, created and locked (retried if a sweep removed it meanwhile)."""
    import fcntl

    while True:
        fd, name = tempfile.mkstemp(prefix=f".{stem}.", suffix=".lock", dir=parent)
        fh = os.fdopen(fd, "a")
        fcntl.flock(fh, fcntl.LOCK_EX)  # a sweep holds it only for a moment
        try:
            if os.path.samestat(os.fstat(fh.fileno()), os.stat(name)):
                return fh, Path(name)
        except FileNotFoundError:
            pass
        fh.close()


@contextlib.contextmanager
def scratch_dir(parent: str | Path, stem: str, kind: str, *, create: bool = True) -> Iterator[Path]:
    """A hidden working folder ``parent/.{stem}.{token}.{kind}`` (created unless ``create`` is False, for a folder
    made by a rename), removed on exit, with the lock file ``.{stem}.{token}.lock`` held meanwhile: when its
    process is killed, the next :func:`sweep_scratch` of ``parent`` and ``stem`` removes what it left."""
    if kind not in SCRATCH_KINDS:
        raise ValueError(f"scratch folder kind {kind!r} is not one of {SCRATCH_KINDS}")
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    fh, lock = _held_lock(parent, stem)
    path = parent / (lock.name[: -len(".lock")] + f".{kind}")
    try:
        if create:
            path.mkdir()
            os.chmod(path, default_mode(directory=True))
        yield path
    finally:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        lock.unlink(missing_ok=True)
        fh.close()


def sweep_scratch(parent: str | Path, stem: str) -> list[Path]:
    """Clean what killed processes left in ``parent`` for ``stem`` (:func:`scratch_dir` folders whose lock nobody
    holds any more), and return the older working folders found without a lock file (:data:`LEGACY_SCRATCH`;
    logged as a warning, never removed). An ``.old`` folder whose ``parent/stem`` is missing (killed between
    the two renames that replace it) is renamed back into place instead of being removed."""
    parent = Path(parent)
    if not parent.is_dir():
        return []
    prefix = f".{stem}."
    for lock in sorted(parent.glob(glob.escape(prefix) + "*.lock")):
        base = lock.name[: -len(".lock")]
        if not _TOKEN.match(base[len(prefix):]) or not lock.is_file() or lock.stat().st_size:
            continue  # not a lock file scratch_dir made
        fh = try_lock(lock)
        if fh is None:
            continue  # in use
        try:
            if not os.path.samestat(os.fstat(fh.fileno()), os.stat(lock)):
                continue
            for left in sorted(parent / f"{base}.{kind}" for kind in SCRATCH_KINDS):
                if not (left.exists() or left.is_symlink()):
                    continue
                target = parent / stem
                if left.name.endswith(".old") and left.is_dir() and not (target.exists() or target.is_symlink()):
                    os.rename(left, target)
                    logger.warning("restored '%s' from '%s', left by an interrupted rkd run", target, left.name)
                elif left.is_dir() and not left.is_symlink():
                    shutil.rmtree(left, ignore_errors=True)
                else:
                    left.unlink(missing_ok=True)
            lock.unlink(missing_ok=True)
        except FileNotFoundError:
            pass
        finally:
            fh.close()
    legacy: list[Path] = []
    for pattern in LEGACY_SCRATCH:
        for left in sorted(parent.glob(pattern.replace("{stem}", glob.escape(stem)))):
            lock_name = left.name.rsplit(".", 1)[0] + ".lock" if left.name.startswith(prefix) else ""
            if left.is_dir() and not (lock_name and (parent / lock_name).exists()) and left not in legacy:
                legacy.append(left)
    if legacy:
        logger.warning("working folder(s) left by an interrupted rkd run: %s; delete them if no rkd process is "
                       "using them", ", ".join(f"'{p}'" for p in legacy))
    return legacy


def check_output_path(path: Path | None, option: str, *, folder: bool) -> None:
    """Refuse, before any work, an output the run could not write: a file where a folder is wanted (or the
    reverse), a file on the way, or a folder that is not writable (tried with a temporary file, removed at once,
    in the nearest folder that exists: permissions alone do not tell for root or a read-only file system). Nothing
    else is created here.

    Raises:
        UsageError: naming ``option``, the path and what to do.
    """
    if path is None:
        return
    if str(path).strip() in ("", ".") and not folder:
        raise UsageError(f"{option} '{path}' is not a file name")
    if path.exists() and folder and not path.is_dir():
        raise UsageError(f"{option} '{path}' is a file; give a folder")
    if path.exists() and not folder and path.is_dir():
        raise UsageError(f"{option} '{path}' is a folder; give a file path")
    anchor = path if folder and path.is_dir() else path.parent
    while not anchor.exists() and anchor != anchor.parent:
        anchor = anchor.parent
    if not anchor.is_dir():
        raise UsageError(f"{option} '{path}': '{anchor}' is a file, so the path cannot be created")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise UsageError(f"{option} '{path}': '{anchor}' is not writable; choose another path")
    try:
        with tempfile.TemporaryFile(dir=anchor):
            pass
    except OSError as exc:
        raise UsageError(f"{option} '{path}': cannot write in '{anchor}' ({exc.strerror or exc}); choose another "
                         "path") from None
