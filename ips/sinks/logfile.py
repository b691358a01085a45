"""An append-only log file of lines that rotates itself by size and can be reopened.

Both ways logrotate users expect work:
  size      when the file would pass max_bytes it becomes FILE.1 (FILE.1 -> FILE.2, …, the
            oldest beyond `keep` deleted) and a new FILE is started. 0: never (logrotate's job).
  reopen    after logrotate moved FILE away, SIGHUP makes the daemon reopen FILE by name
            (a new file), so nothing is written to the moved one any longer.
Several writers (one worker per queue) may share FILE: each line is one append (O_APPEND,
so lines do not interleave), and rotation happens under an exclusive lock of FILE.lock,
after checking that FILE is still the file this writer has open — if another writer has
rotated it already, this one only reopens.
A write never raises: a full disk or a removed directory is counted (write_errors) and the
file is reopened at the next write, so an events file can never stop the packet path.
Every file is opened by ips.safefile: never through a symbolic link, never in a directory
others can change, created 0640 with the `ipsctl` group (rotated files keep that, being
renamed). An unsafe path is refused when the log is made (UnsafePathError, which says why);
one that turns unsafe later (a link planted after a rotation) is counted in write_errors,
kept in `last_error`, and nothing is written through it.
"""

from __future__ import annotations

import fcntl
import os
from typing import IO

from ips.safefile import UnsafePathError, open_private_file


def parse_size(text: str) -> int:
    """'100M', '1G', '512k', '4096' -> bytes (binary units)."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    s = text.strip().lower().removesuffix("b").removesuffix("i")
    factor = units.get(s[-1:], 1)
    if s[-1:] in units:
        s = s[:-1]
    try:
        value = int(float(s) * factor)
    except ValueError as exc:
        raise ValueError(f"not a size: {text!r} (e.g. 100M, 1G, 0 for no limit)") from exc
    if value < 0:
        raise ValueError(f"not a size: {text!r}")
    return value


class RotatingLog:
    """Lines appended to `path`, rotated at `max_bytes` (0: never) keeping `keep` old files."""

    def __init__(self, path: str, max_bytes: int = 0, keep: int = 5) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = max(1, keep)
        self.rotations = 0
        self.reopens = 0
        self.write_errors = 0
        self.lines = 0
        self.last_error = ""  # why the last open failed, for status
        self._file: IO[str] | None = None
        self._size = 0
        self._open(refuse_unsafe=True)

    def _open(self, refuse_unsafe: bool = False) -> None:
        try:
            fd = open_private_file(self.path, os.O_WRONLY | os.O_APPEND)
            self._file = os.fdopen(fd, "a", buffering=1, encoding="utf-8")
            self._size = self._file.tell()
        except UnsafePathError as exc:
            if refuse_unsafe:
                raise
            self._open_failed(exc)
        except OSError as exc:
            self._open_failed(exc)

    def _open_failed(self, exc: OSError) -> None:
        self._file = None
        self.write_errors += 1
        self.last_error = str(exc)

    def write(self, line: str) -> None:
        """One line (without its newline)."""
        if self._file is None:
            self._open()
            if self._file is None:
                return
        data = line + "\n"
        if self.max_bytes and self._size and self._size + len(data) > self.max_bytes:
            self.rotate()
            if self._file is None:
                return
        try:
            self._file.write(data)
            self._size += len(data)
            self.lines += 1
            if self.max_bytes and self.lines % 16 == 0:
                self._follow_other_writers()
        except OSError:
            self.write_errors += 1
            self._close()

    def rotate(self) -> None:
        """FILE -> FILE.1 -> … -> FILE.keep (the oldest is deleted), then a new FILE."""
        try:
            with os.fdopen(open_private_file(self.path + ".lock", os.O_WRONLY), "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if self._rotated_by_another():
                    self._close()
                    self._open()  # another writer rotated FILE: write to the new one
                    return
                self._rotate_locked()
        except OSError as exc:
            self.write_errors += 1
            self.last_error = str(exc)
            self._close()
            self._open()

    def _follow_other_writers(self) -> None:
        """Other writers of FILE count in its size, and may have rotated it: then write to
        the new FILE (checked every few lines: two stat calls)."""
        if self._file is None:
            return
        try:
            st = os.fstat(self._file.fileno())
            if os.stat(self.path).st_ino != st.st_ino:
                self._close()
                self._open()
            else:
                self._size = st.st_size
        except OSError:
            self._close()
            self._open()

    def _rotated_by_another(self) -> bool:
        if self._file is None:
            return False
        try:
            return os.stat(self.path).st_ino != os.fstat(self._file.fileno()).st_ino
        except OSError:
            return True

    def _rotate_locked(self) -> None:
        self._close()
        try:
            oldest = f"{self.path}.{self.keep}"
            if os.path.exists(oldest):
                os.unlink(oldest)
            for n in range(self.keep - 1, 0, -1):
                if os.path.exists(f"{self.path}.{n}"):
                    os.rename(f"{self.path}.{n}", f"{self.path}.{n + 1}")
            if os.path.exists(self.path):
                os.rename(self.path, f"{self.path}.1")
            self.rotations += 1
        except OSError:
            self.write_errors += 1
        self._open()

    def reopen(self) -> None:
        """Close and open the file by name again (after logrotate moved it: SIGHUP)."""
        self._close()
        self._open()
        self.reopens += 1

    def flush(self) -> None:
        if self._file is not None:
            try:
                self._file.flush()
            except OSError:
                self.write_errors += 1

    def _close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                self.write_errors += 1
            self._file = None

    def close(self) -> None:
        self._close()

    def stats(self) -> dict[str, int]:
        return {
            "lines": self.lines,
            "rotations": self.rotations,
            "reopens": self.reopens,
            "write_errors": self.write_errors,
            "size": self._size,
        }
