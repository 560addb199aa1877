"""Rotation-safe following of access-log files (globs), with positions that survive
restarts, and the atomic checkpoint file.

A file is known by (device, inode) plus a fingerprint of its first bytes, so a reused inode,
or a file truncated and regrown while we were down, is read again from 0 instead of from a
stale offset. Rename-and-create rotation: the old handle is drained to its end before the
new file is read (also when the rename happened while we were down: the old file is found
by its inode in the same directory). Copytruncate: size < offset means the file was
truncated; reading restarts at 0. Only complete lines are returned; a partial last line
waits for its newline. A backlog is read in bounded batches (`max_read_bytes` per `read()`,
`more` says whether more is already waiting), so memory stays flat however far behind we are;
a rotated-away file still being finished keeps its place in the positions until it is done.

Exactly-once: the exporter saves ONE checkpoint (positions + counter values + enriched-log
offset) atomically; after a crash it restores all three together, so nothing read before
the checkpoint is counted again and nothing after it is lost."""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import stat
import time
from dataclasses import dataclass
from io import BytesIO
from operator import itemgetter
from typing import Any

import orjson

from llmtraffic.exporter.collector import ExporterStats

log = logging.getLogger(__name__)

_CHOP = itemgetter(slice(None, -1))  # a line without its newline
FINGERPRINT_BYTES = 256
MAX_READ_BYTES = 8 << 20  # per read(): bounds the lines held in memory at once
#: A longer line is dropped (to its newline) and counted as the parse error `too_long`.
MAX_LINE_BYTES = 1 << 20
#: Seconds between two warnings that a file is replaced faster than it is polled.
FAST_ROTATION_WARN_EVERY = 60.0


def split_lines(data: bytes) -> list[bytes]:
    """`data.split(b"\\n")`, with the newlines found by memchr (BytesIO's readlines) rather
    than byte by byte: a third of the cost on access-log lines."""
    parts = BytesIO(data).readlines()
    last = parts.pop() if parts and not parts[-1].endswith(b"\n") else b""
    parts = list(map(_CHOP, parts))
    parts.append(last)
    return parts


def _fingerprint(fh, length: int) -> str:
    pos = fh.tell()
    fh.seek(0)
    data = fh.read(length)
    fh.seek(pos)
    return hashlib.blake2b(data, digest_size=8).hexdigest()


@dataclass
class _Followed:
    path: str
    fh: Any
    dev: int
    ino: int
    offset: int = 0  # bytes consumed up to the end of the last complete line
    partial: bytes = b""
    fp: str = ""
    fp_len: int = 0
    skipping: bool = False  # inside a line over max_line_bytes: dropped to its newline
    rotated_at: int = -1  # the pass (`Tailer._turn`) that found it at a rotation

    def identity(self) -> dict[str, Any]:
        if self.fp_len < FINGERPRINT_BYTES:
            self.refresh_fingerprint()
        return {"dev": self.dev, "ino": self.ino, "offset": self.offset, "fp": self.fp,
                "fp_len": self.fp_len}

    def refresh_fingerprint(self) -> None:
        size = os.fstat(self.fh.fileno()).st_size
        n = min(size, FINGERPRINT_BYTES)
        if n != self.fp_len:
            self.fp, self.fp_len = _fingerprint(self.fh, n), n


class Tailer:
    """Follows every file matching `patterns`; `read()` returns new complete lines, at most
    about `max_read_bytes` of them per call (`more` is then True: call again)."""

    def __init__(self, patterns: list[str], *, from_beginning: bool = False,
                 chunk_size: int = 1 << 20, max_read_bytes: int = MAX_READ_BYTES,
                 max_line_bytes: int = MAX_LINE_BYTES,
                 stats: ExporterStats | None = None) -> None:
        self.patterns = list(patterns)
        self.max_line = max_line_bytes
        self.from_beginning = from_beginning
        self.chunk_size = chunk_size
        self.max_read_bytes = max_read_bytes
        self.stats = stats or ExporterStats()
        self.files: dict[str, _Followed] = {}
        # path -> its rotated-away file, still being finished before `files[path]` is read
        self._draining: dict[str, _Followed] = {}
        self.refused: dict[str, str] = {}  # path -> why it is not followed (said once)
        self._fast_warned_at = -FAST_ROTATION_WARN_EVERY
        self.errors: dict[str, str] = {}  # path -> why reading it fails now
        self.more = False  # the last read() stopped at its byte budget, not at the end
        self._turn = 0  # which path the next read() starts with (fairness under a budget)
        self._started = False
        self._discover()  # files present now start at their end (or 0 with from_beginning)

    # ---- discovery ---------------------------------------------------------------------
    def _paths(self) -> list[str]:
        out: list[str] = []
        for p in self.patterns:
            out += sorted(glob.glob(p)) if glob.has_magic(p) else \
                ([p] if os.path.exists(p) else [])
        return list(dict.fromkeys(out))

    def _open(self, path: str, at_end: bool) -> _Followed | None:
        """`path` opened to follow; None (said once, counted) when it cannot be opened or
        is not a regular file (a FIFO would block the loop, a device never ends)."""
        try:  # never blocks, even on a FIFO
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            self._refuse(path, f"cannot open it: {e.strerror or e} (check the path and "
                         "permissions)", "open_error")
            return None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            self._refuse(path, "not a regular file (a FIFO, a device or a directory); only "
                         "regular files are followed", "not_regular")
            return None
        self.refused.pop(path, None)
        fh = os.fdopen(fd, "rb")
        f = _Followed(path, fh, st.st_dev, st.st_ino)
        if at_end:
            f.offset = st.st_size
            fh.seek(f.offset)
        f.refresh_fingerprint()
        return f

    def _refuse(self, path: str, why: str, reason: str) -> None:
        if self.refused.get(path) != why:
            log.error("access log %s: %s", path, why)
            self.stats.tail_error(reason)
            self.refused[path] = why

    def _discover(self) -> None:
        first = not self._started
        self._started = True
        for path in self._paths():
            if path not in self.files:
                f = self._open(path, at_end=first and not self.from_beginning)
                if f is not None:
                    self.files[path] = f
                    log.info("following %s from byte %d", path, f.offset)

    # ---- reading -----------------------------------------------------------------------
    def read(self) -> list[tuple[str, list[bytes]]]:
        """New complete lines per file, newline stripped, about `max_read_bytes` at most
        (`more` tells whether the budget, not the end of the files, stopped it). Never
        blocks."""
        self._discover()
        out: list[tuple[str, list[bytes]]] = []
        self.more = False
        paths = list(dict.fromkeys([*self._draining, *self.files]))
        if paths:
            k = self._turn % len(paths)
            paths = paths[k:] + paths[:k]
            self._turn += 1
        budget = self.max_read_bytes
        for path in paths:
            if budget > 0:
                try:
                    budget -= self._read_path(path, budget, out)
                except OSError as e:  # this path now; the others go on
                    self._failed(path, e)
                else:
                    self._recovered(path)
            else:
                self.more = True
            self._update_lag(path)
        return out

    def _failed(self, path: str, e: OSError) -> None:
        why = f"reading failed: {e.strerror or e}; retried every pass"
        self.stats.tail_error("read_error")
        if self.errors.get(path) != why:
            log.error("access log %s: %s", path, why)
            self.errors[path] = why

    def _recovered(self, path: str) -> None:
        if self.errors.pop(path, None) is not None:
            log.info("access log %s: reading again", path)

    def _read_path(self, path: str, budget: int, out: list) -> int:
        """Lines of one path into `out`: a rotated-away file is finished first. Returns the
        bytes read."""
        used = 0
        while True:
            old = self._draining.get(path)
            if old is not None:
                n, eof = self._emit(path, old, budget - used, out)
                used += n
                if not eof:
                    return used
                old.fh.close()
                del self._draining[path]
            f = self.files.get(path)
            if f is None:
                return used
            if not self._check_rotation(path, f):
                break  # else the old file is now draining: finish it, then the new one
        return used + self._emit(path, f, budget - used, out)[0]

    def _emit(self, path: str, f: _Followed, budget: int, out: list) -> tuple[int, bool]:
        lines, n, eof = self._drain(f, budget)
        if lines:
            out.append((path, lines))
        if not eof:
            self.more = True
        return n, eof

    def _update_lag(self, path: str) -> None:
        f = self.files.get(path)
        if f is None:
            return
        old = self._draining.get(path)
        try:
            lag = os.path.getsize(path) - f.offset
            if old is not None:
                lag += os.fstat(old.fh.fileno()).st_size - old.offset
        except FileNotFoundError:
            self._forget_if_deleted(path, f, old)
            return
        except OSError:
            return
        self.stats.lag[path] = max(0, lag)

    def _forget_if_deleted(self, path: str, f: _Followed, old: _Followed | None) -> None:
        """A path gone with its file deleted (a removed pod's container log) and read to its
        end is closed and forgotten, so its descriptor does not keep the file alive."""
        st = os.fstat(f.fh.fileno())
        if old is None and st.st_nlink == 0 and st.st_size <= f.offset + len(f.partial):
            f.fh.close()
            del self.files[path]
            self.stats.lag.pop(path, None)
            log.info("%s was deleted; no longer following it", path)

    def _check_rotation(self, path: str, f: _Followed) -> bool:
        """True when `path` is a new file (rename-and-create): `f` moves to the draining
        files and the new one is opened; a truncated file (copytruncate) restarts at 0."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return False  # renamed away, new file not created yet: keep reading the old handle
        if (st.st_dev, st.st_ino) != (f.dev, f.ino):
            self._draining[path] = f  # rename-and-create: finish the old file first
            self.stats.rotation("rename")
            if f.rotated_at >= self._turn - 1:
                self._rotated_fast(path)
            log.info("%s was rotated (new inode); reading the new file from the start", path)
            new = self._open(path, at_end=False)
            if new is None:
                del self.files[path]
            else:
                new.rotated_at = self._turn
                self.files[path] = new
            return True
        if st.st_size < f.offset or (f.fp_len and hashlib.blake2b(
                os.pread(f.fh.fileno(), f.fp_len, 0), digest_size=8).hexdigest() != f.fp):
            self.stats.rotation("truncate")
            log.info("%s was truncated (%d < %d bytes); reading from the start", path,
                     st.st_size, f.offset)
            f.offset = 0
            f.partial = b""
            f.fh.seek(0)
            f.fp, f.fp_len = "", 0
        return False

    def _cut_long(self, f: _Followed, parts: list[bytes]) -> list[bytes]:
        """`parts` without lines over max_line_bytes (each counted `too_long`); an
        unfinished one over it is dropped and skipped to its newline."""
        kept = [ln for ln in parts if len(ln) <= self.max_line]
        too_long = len(parts) - len(kept) + (len(f.partial) > self.max_line)
        if len(f.partial) > self.max_line:
            f.partial, f.skipping = b"", True
        for _ in range(too_long):
            self.stats.parse_error("too_long")
        if too_long:
            log.warning("%s: dropped %d line(s) longer than %d bytes (parse error too_long)",
                        f.path, too_long, self.max_line)
        return kept

    def _rotated_fast(self, path: str) -> None:
        """`path` was replaced on two passes in a row: files that come and go between two
        passes are never seen, so lines may be lost. Counted; said once a minute."""
        self.stats.tail_error("rotated_between_polls")
        now = time.monotonic()
        if now - self._fast_warned_at >= FAST_ROTATION_WARN_EVERY:
            self._fast_warned_at = now
            log.warning("%s is replaced faster than it is read (twice in a row between two "
                        "passes): a file that comes and goes between two passes is never "
                        "seen and its lines are lost; rotate less often", path)

    def _drain(self, f: _Followed, budget: int) -> tuple[list[bytes], int, bool]:
        """Complete lines from `f`, reading at most `budget` bytes: (lines, bytes read,
        whether the end of the file was reached)."""
        lines: list[bytes] = []
        total = 0
        eof = False
        read = f.fh.read
        while total < budget:
            data = read(min(self.chunk_size, budget - total))
            if not data:
                eof = True
                break
            total += len(data)
            parts = split_lines(data)
            if f.skipping:  # the rest of a line over max_line_bytes
                if len(parts) == 1:
                    continue
                del parts[0]
                f.skipping = False
            cr = b"\r" in data
            longest = len(data) + len(f.partial)
            if f.partial:  # only the first line is copied, not the whole chunk
                cr = cr or b"\r" in f.partial
                parts[0] = f.partial + parts[0]
            f.partial = parts.pop()
            if longest > self.max_line and (len(f.partial) > self.max_line or
                                            max(map(len, parts), default=0) > self.max_line):
                parts = self._cut_long(f, parts)
            if cr:
                parts = [ln[:-1] if ln.endswith(b"\r") else ln for ln in parts]
            lines += parts
        f.offset = f.fh.tell() - len(f.partial)
        if total:
            self.stats.bytes[f.path] = self.stats.bytes.get(f.path, 0) + total
            self.stats.lines[f.path] = self.stats.lines.get(f.path, 0) + len(lines)
            if f.fp_len < FINGERPRINT_BYTES:
                f.refresh_fingerprint()
        return lines, total, eof

    # ---- positions ---------------------------------------------------------------------
    def state(self) -> dict:
        """Positions to save (only complete lines count as read). A path whose rotated-away
        file is still being finished is saved at that file, so a restart finds it by inode
        and finishes it before reading the new file from the start."""
        files = {p: f.identity() for p, f in self.files.items()}
        files.update((p, f.identity()) for p, f in self._draining.items())
        return {"files": files}

    def restore(self, state: dict) -> None:
        """Resume from saved positions; call before the first `read()`. Files the
        checkpoint does not know are read from the start (they appeared while we were
        down)."""
        self._started = True
        saved_files = state.get("files") or {}
        for path, f in self.files.items():
            if path not in saved_files:
                f.offset = 0
                f.fh.seek(0)
        for path, saved in saved_files.items():
            old = self.files.pop(path, None)
            if old is not None:
                old.fh.close()
            self._restore_one(path, saved)
        self._discover()

    def _restore_one(self, path: str, saved: dict) -> None:
        cur = self._open(path, at_end=False) if os.path.exists(path) else None
        if cur is not None and (cur.dev, cur.ino) == (saved["dev"], saved["ino"]):
            if self._same_content(cur, saved):
                cur.offset = saved["offset"]
                cur.fh.seek(cur.offset)
            elif self._offset_past_end(cur, saved):
                size = os.fstat(cur.fh.fileno()).st_size
                log.warning("%s: the checkpoint's offset %d is past the file's end (%d bytes) "
                            "though its first bytes are the same; resuming at the end, so "
                            "nothing is counted twice", path, saved["offset"], size)
                cur.offset = size
                cur.fh.seek(size)
            else:
                self.stats.rotation("truncate")
                log.warning("%s changed while we were down (fingerprint differs); reading "
                            "it from the start", path)
            self.files[path] = cur
            return
        # rotated while we were down: find the old file by inode and finish it first
        old = self._find_by_inode(path, saved)
        if old is not None:
            self._draining[path] = old
            self.stats.rotation("rename")
            log.info("%s was rotated while we were down; finishing %s first", path, old.path)
        if cur is not None:
            self.files[path] = cur

    def _offset_past_end(self, f: _Followed, saved: dict) -> bool:
        """The same file (inode and first bytes) but shorter than the saved offset: a
        wrong offset, not a truncation (whose new first bytes differ)."""
        size = os.fstat(f.fh.fileno()).st_size
        return saved["fp_len"] > 0 and saved["fp_len"] <= size < saved["offset"] and \
            _fingerprint(f.fh, saved["fp_len"]) == saved["fp"]

    def _same_content(self, f: _Followed, saved: dict) -> bool:
        size = os.fstat(f.fh.fileno()).st_size
        if size < saved["offset"] or size < saved["fp_len"]:
            return False
        return _fingerprint(f.fh, saved["fp_len"]) == saved["fp"]

    def _find_by_inode(self, path: str, saved: dict) -> _Followed | None:
        # a symlink's target directory: kubelet's /var/log/containers/*.log point into
        # /var/log/pods/<ns>_<pod>_<uid>/<container>/, where rotated files stay
        directory = os.path.dirname(os.path.realpath(path)) or "."
        try:
            entries = list(os.scandir(directory))
        except OSError:
            return None
        for e in entries:
            try:
                st = e.stat()
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == (saved["dev"], saved["ino"]) and e.is_file():
                f = self._open(e.path, at_end=False)
                if f is not None and self._same_content(f, saved):
                    f.offset = saved["offset"]
                    f.fh.seek(f.offset)
                    f.path = path  # lines count toward the followed path
                    return f
                if f is not None:
                    f.fh.close()
        return None

    def close(self) -> None:
        for f in [*self.files.values(), *self._draining.values()]:
            f.fh.close()
        self.files.clear()
        self._draining.clear()


def save_checkpoint(path: str, data: dict) -> None:
    """Write `data` as JSON atomically: temp file, fsync, rename, fsync the directory."""
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(orjson.dumps(data))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    try:
        dfd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def load_checkpoint(path: str) -> dict | None:
    """The saved checkpoint, or None when there is none. A corrupt file is an error that
    says what to do (it is never silently ignored: that would count lines twice)."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise ValueError(f"{path}: the positions file is corrupt ({e}); move it away to "
                         "start over (lines already read will be read again)") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the positions file is not a JSON object")
    return data
