"""Opening the files the daemon writes (events, rotated events, state) without being tricked.

The daemon runs as root and writes where its configuration says, often a directory other
users can write to. Planted there, a symbolic link (or a hard link, or a FIFO) would make
root append to or truncate a file of the attacker's choosing. So every such file is opened:

* in a directory that only root (or the user the daemon runs as) can change: owned by root or
  by this process's user, and not writable by group or others unless the sticky bit is set
  (as /tmp: then nobody can replace another user's file there);
* relative to that directory's descriptor, so the directory checked is the one used;
* with O_NOFOLLOW (a symbolic link at the name is refused, never followed) and O_NONBLOCK
  (a FIFO planted at the name cannot hang the open), and then checked to be a regular file
  with no other hard link;
* created 0640 (owner writes, group reads, others nothing) and given the group `ipsctl` when
  that group exists, so the users allowed to read events are exactly that group's members;
  an existing file wider than 0640 is narrowed to it.

A refusal is an UnsafePathError (an OSError) whose message names the path and the reason.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import grp
import os
import stat

SERVICE_GROUP = "ipsctl"  # readers of the daemon's files, when the administrator made it
PRIVATE_MODE = 0o640


class UnsafePathError(OSError):
    """The path cannot be written safely; str() says which path and why."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(errno.EPERM, f"{path}: {reason}; refusing to write there")
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return str(self.strerror)


def service_gid() -> int | None:
    """The group id of SERVICE_GROUP, or None when there is no such group."""
    try:
        return grp.getgrnam(SERVICE_GROUP).gr_gid
    except KeyError:
        return None


def _check_directory(directory: str, dir_fd: int) -> None:
    st = os.fstat(dir_fd)
    if st.st_uid not in (0, os.geteuid()):
        raise UnsafePathError(
            directory, f"the directory is owned by uid {st.st_uid}, not by root or this user"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
        raise UnsafePathError(
            directory,
            f"the directory is writable by {'others' if st.st_mode & stat.S_IWOTH else 'its group'}"
            f" (mode {stat.S_IMODE(st.st_mode):04o}) without the sticky bit",
        )


def _open_directory(path: str) -> tuple[str, str, int]:
    """(directory, name, descriptor of the checked directory) for PATH."""
    directory, name = os.path.split(os.path.abspath(path))
    if not name:
        raise UnsafePathError(path, "not a file name")
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _check_directory(directory, dir_fd)
    except BaseException:
        os.close(dir_fd)
        raise
    return directory, name, dir_fd


def check_writable_path(path: str) -> None:
    """Raise UnsafePathError when PATH could not be opened safely for writing (an unsafe
    directory, a symbolic link or something other than a plain file at the name); a missing
    file is fine. For configuration checks, before anything is written."""
    _directory, name, dir_fd = _open_directory(path)
    try:
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        _check_file(path, st)
    finally:
        os.close(dir_fd)


def _check_file(path: str, st: os.stat_result) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePathError(path, "it is a symbolic link")
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePathError(path, "it is not a regular file")
    if st.st_nlink > 1:
        raise UnsafePathError(path, f"the file has {st.st_nlink - 1} other hard link(s)")


def open_private_file(
    path: str, flags: int = os.O_WRONLY | os.O_APPEND, mode: int = PRIVATE_MODE
) -> int:
    """A descriptor of PATH opened with FLAGS (O_CREAT is implied; O_TRUNC and O_APPEND are
    honoured), safely as the module says; created MODE with the service group. The caller
    closes it (os.fdopen takes it over)."""
    flags &= ~(os.O_CREAT | os.O_EXCL)
    safe = flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    _directory, name, dir_fd = _open_directory(path)
    try:
        for _attempt in range(3):  # the file may come or go between the two opens
            try:
                fd = os.open(name, safe | os.O_CREAT | os.O_EXCL, mode, dir_fd=dir_fd)
                created = True
            except FileExistsError:
                try:
                    fd = os.open(name, safe, dir_fd=dir_fd)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    if exc.errno == errno.ELOOP:
                        raise UnsafePathError(path, "it is a symbolic link") from None
                    if exc.errno == errno.ENXIO:  # a FIFO without a reader
                        raise UnsafePathError(path, "it is not a regular file") from None
                    raise
                created = False
            break
        else:
            raise UnsafePathError(path, "the file keeps appearing and disappearing")
        try:
            _finish(path, fd, created, mode)
        except BaseException:
            os.close(fd)
            raise
        return fd
    finally:
        os.close(dir_fd)


def _finish(path: str, fd: int, created: bool, mode: int) -> None:
    st = os.fstat(fd)
    _check_file(path, st)
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    if created:
        os.fchmod(fd, mode)  # exactly MODE, whatever the umask
        gid = service_gid()
        if gid is not None:
            # Without the right to give the file that group, it keeps ours: narrower, not wider.
            with contextlib.suppress(PermissionError):
                os.fchown(fd, -1, gid)
    elif st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & ~mode:
        os.fchmod(fd, stat.S_IMODE(st.st_mode) & mode)


def replace_private_file(path: str, data: bytes, mode: int = PRIVATE_MODE) -> None:
    """Write DATA to PATH atomically: a new file beside it (opened safely, MODE, the service
    group), flushed to disk, then renamed over PATH (a rename replaces a link planted at PATH,
    it never writes through it). For state files that readers must never see half-written."""
    directory, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
    fd = open_private_file(tmp, os.O_WRONLY | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
