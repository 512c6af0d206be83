"""Writing files so that a crash mid-write never leaves a truncated one: :func:`atomic_write` (one
file) and :func:`replace_folder` (the files a writer owns in a folder, swapped in as a whole), the
mechanisms every writer of the package uses (checkpoints, exports, images, reports, saved nets; the
trainers' checkpoints through the integrations). Standard library only.

:func:`replace_folder` (``directory, write, owned, last``) calls ``write(staging)`` on a new folder beside
``directory`` (``.NAME.saving-HOST-PID-TOKEN``, on the same file system), fsyncs it, then puts it in place:

- no ``directory`` yet: one rename;
- a ``directory`` that holds only files named in ``owned``: it is renamed aside
  (``.NAME.replaced-HOST-PID-TOKEN``), the new folder renamed in, the old one deleted. Neither POSIX
  nor Windows renames a folder onto an existing non-empty one, hence two renames; a process killed
  between them leaves no ``directory`` but both folders beside it, which :func:`interrupted_save` finds;
- a ``directory`` that also holds other files (a run's folder with its logs, the working directory),
  is a link, or cannot be renamed (Windows, while a file in it is open): it is kept, and the owned
  files are moved in one by one, each with an atomic rename, ``last`` after the others, and owned
  files the new save did not write are deleted after that. Every write has finished by then, so a
  failing write (a full disk) changes nothing; only a kill in the instant between two renames leaves
  a mixed folder (which a reader that checks its files' records, as ``load_pretrained`` does, refuses).

Leftovers of a killed save are deleted by the next save into the same folder once the process that
wrote them has gone (checked on POSIX, for this host's processes; elsewhere they stay).
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Union

__all__ = ["atomic_write", "interrupted_save", "leftovers", "replace_folder"]

PathLike = Union[str, os.PathLike]


def atomic_write(path: PathLike, write: Callable[[str], object]) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make exports private to their writer
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


_KINDS = ("saving", "replaced")


def _host() -> str:
    return re.sub(r"\W", "_", socket.gethostname()) or "host"


def _absolute(directory: PathLike) -> Path:
    return Path(os.path.abspath(directory))  # ".." and "run/" resolved without following links


def _sibling(target: Path, kind: str) -> Path:
    return target.with_name(f".{target.name}.{kind}-{_host()}-{os.getpid()}-{secrets.token_hex(4)}")


def _pattern(target: Path) -> "re.Pattern[str]":
    return re.compile(rf"\.{re.escape(target.name)}\.({'|'.join(_KINDS)})-(\w+)-(\d+)-[0-9a-f]{{8}}")


def leftovers(directory: PathLike, kind: Optional[str] = None) -> List[Path]:
    """The staging (``kind="saving"``) and set-aside (``"replaced"``) folders of saves into
    ``directory`` that are still beside it, oldest first."""
    target = _absolute(directory)
    if not target.parent.is_dir():
        return []
    pattern = _pattern(target)
    found = [p for p in target.parent.iterdir() if (m := pattern.fullmatch(p.name)) and kind in (None, m.group(1))]
    return sorted(found, key=lambda p: p.stat().st_mtime)


def interrupted_save(directory: PathLike) -> Optional[Path]:
    """For a missing ``directory``: the previous save a killed save set aside (``None`` if there is none)."""
    if os.path.lexists(directory):
        return None
    aside = leftovers(directory, "replaced")
    return aside[-1] if aside else None


def _owner_gone(path: Path, pattern: "re.Pattern[str]") -> bool:
    match = pattern.fullmatch(path.name)
    if match is None or os.name != "posix" or match.group(2) != _host():
        return False
    pid = int(match.group(3))
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _sync(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb+") as fh:
            os.fsync(fh.fileno())
    _sync_dir(folder)


def _sync_dir(folder: Path) -> None:
    if os.name != "posix":  # Windows cannot open a folder to fsync it
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _holds_cwd(target: Path) -> bool:
    cwd, real = Path(os.path.realpath(os.getcwd())), Path(os.path.realpath(target))
    return cwd == real or real in cwd.parents


def _swap_whole(staging: Path, target: Path) -> bool:
    """Rename ``target`` aside and ``staging`` in; ``False`` (nothing changed) when ``target`` cannot move."""
    old = _sibling(target, "replaced")
    shutil.copymode(target, staging)
    try:
        os.rename(target, old)
    except OSError:
        return False
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(old, target)
        raise
    _sync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)
    return True


def _swap_files(staging: Path, target: Path, owned: Sequence[str], last: str) -> None:
    written = [n for n in owned if (staging / n).exists()]
    for name in sorted(written, key=lambda n: n == last):
        os.replace(staging / name, target / name)
    for name in owned:  # an owned file of the previous save that this one did not write
        if name not in written and (target / name).exists():
            os.unlink(target / name)
    _sync_dir(target)


def replace_folder(directory: PathLike, write: Callable[[Path], None], owned: Sequence[str], last: str) -> None:
    """Write ``directory``'s ``owned`` files with ``write(folder)`` into a sibling folder, then swap them in
    (see the module's docstring); ``last`` is the file that makes a folder a save (its record)."""
    target = _absolute(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    pattern = _pattern(target)
    for path in leftovers(target):
        if _owner_gone(path, pattern):
            shutil.rmtree(path, ignore_errors=True)
    staging = _sibling(target, "saving")
    os.mkdir(staging)
    try:
        write(staging)
        _sync(staging)
        if not os.path.lexists(target):
            os.rename(staging, target)
            _sync_dir(target.parent)
            return
        shared = (target.is_symlink() or _holds_cwd(target)
                  or any(p.name not in owned for p in target.iterdir()))
        if shared or not _swap_whole(staging, target):
            _swap_files(staging, target, owned, last)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
