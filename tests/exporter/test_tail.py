"""The tailer: rotation of both kinds mid-stream with exact line counts, partial lines,
restart from saved positions, truncated-and-regrown detection, globs."""

from __future__ import annotations

import os

from llmtraffic.exporter.tail import Tailer, load_checkpoint, save_checkpoint


def lines_of(tailer: Tailer) -> list[bytes]:
    return [ln for _, batch in tailer.read() for ln in batch]


def write(path, *lines: str) -> None:
    with open(path, "a") as f:
        f.write("".join(ln + "\n" for ln in lines))


def test_rename_and_copytruncate_rotation_mid_stream_exact(tmp_path):
    log = tmp_path / "access.log"
    log.write_text("")
    t = Tailer([str(log)])
    seen: list[bytes] = []
    n = 0
    for round_ in range(6):
        for _ in range(500):
            write(log, f"line {n}")
            n += 1
        if round_ % 3 == 0:
            seen += lines_of(t)
        if round_ == 1:  # logrotate `create`: rename, more lines into the old file, new file
            os.rename(log, tmp_path / "access.log.1")
            write(tmp_path / "access.log.1", f"line {n}")
            n += 1
            log.write_text("")
        if round_ == 3:  # copytruncate
            seen += lines_of(t)
            with open(log, "r+") as f:
                f.truncate(0)
    seen += lines_of(t)
    assert seen == [f"line {i}".encode() for i in range(n)]
    assert t.stats.rotations == {"rename": 1, "truncate": 1}
    assert t.stats.lines[str(log)] == n


def test_partial_line_waits_for_newline(tmp_path):
    log = tmp_path / "a.log"
    log.write_text("")
    t = Tailer([str(log)])
    with open(log, "a") as f:
        f.write('{"a": 1}\n{"b"')
    assert lines_of(t) == [b'{"a": 1}']
    assert lines_of(t) == []
    with open(log, "a") as f:
        f.write(': 2}\r\n')
    assert lines_of(t) == [b'{"b": 2}']


def test_start_at_end_by_default_and_from_beginning(tmp_path):
    log = tmp_path / "a.log"
    write(log, "old")
    assert lines_of(Tailer([str(log)])) == []
    assert lines_of(Tailer([str(log)], from_beginning=True)) == [b"old"]


def test_restart_from_positions_loses_nothing_and_repeats_nothing(tmp_path):
    log = tmp_path / "a.log"
    write(log, *[f"x{i}" for i in range(100)])
    t = Tailer([str(log)], from_beginning=True)
    first = lines_of(t)
    with open(log, "a") as f:
        f.write("x100\nx1")  # partial at the checkpoint
    first += lines_of(t)
    pos = tmp_path / "positions.json"
    save_checkpoint(str(pos), t.state())
    t.close()
    with open(log, "a") as f:
        f.write("01\nx102\n")
    t2 = Tailer([str(log)])
    t2.restore(load_checkpoint(str(pos)))
    assert first + lines_of(t2) == [f"x{i}".encode() for i in range(103)]


def test_rotation_while_down_finishes_the_old_file_first(tmp_path):
    log = tmp_path / "a.log"
    write(log, "a0", "a1")
    t = Tailer([str(log)], from_beginning=True)
    assert lines_of(t) == [b"a0", b"a1"]
    state = t.state()
    t.close()
    write(log, "a2")
    os.rename(log, tmp_path / "a.log.1")
    write(log, "b0")
    t2 = Tailer([str(log)])
    t2.restore(state)
    assert lines_of(t2) == [b"a2", b"b0"]


def test_truncated_and_regrown_while_down_is_read_from_zero(tmp_path):
    """Promtail's known bug: a stale offset into a regrown file skips its start."""
    log = tmp_path / "a.log"
    write(log, "first-generation-1", "first-generation-2")
    t = Tailer([str(log)], from_beginning=True)
    lines_of(t)
    state = t.state()
    t.close()
    with open(log, "r+") as f:
        f.truncate(0)
    write(log, *[f"second-{i}" for i in range(10)])  # longer than the old offset
    t2 = Tailer([str(log)])
    t2.restore(state)
    assert lines_of(t2) == [f"second-{i}".encode() for i in range(10)]


def test_globs_pick_up_new_files_and_chunked_reading(tmp_path):
    write(tmp_path / "a.log", "a-old")
    t = Tailer([str(tmp_path / "*.log")], chunk_size=64)
    assert lines_of(t) == []
    write(tmp_path / "b.log", *[f"b{i:04d}" for i in range(1000)])  # new file: from 0
    got = lines_of(t)
    assert got == [f"b{i:04d}".encode() for i in range(1000)]


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    p = tmp_path / "pos.json"
    p.write_text("{not json")
    import pytest
    with pytest.raises(ValueError, match="move it away"):
        load_checkpoint(str(p))
    assert load_checkpoint(str(tmp_path / "missing.json")) is None


def read_all(tailer: Tailer) -> tuple[list[bytes], int]:
    """Every line, however many budget-bound reads it takes; and how many reads."""
    got, reads = lines_of(tailer), 1
    while tailer.more:
        got += lines_of(tailer)
        reads += 1
    return got, reads


def test_backlog_larger_than_the_read_budget_is_read_completely_in_batches(tmp_path):
    log = tmp_path / "a.log"
    write(log, *[f"line-{i:05d}" for i in range(3000)])  # 33,000 bytes
    t = Tailer([str(log)], from_beginning=True, chunk_size=256, max_read_bytes=1000)
    first = lines_of(t)
    assert t.more and 0 < len(first) <= 1000 // 11 + 1  # one bounded batch, not the file
    rest, reads = read_all(t)
    assert first + rest == [f"line-{i:05d}".encode() for i in range(3000)]
    assert reads >= 30 and not t.more
    assert t.stats.lines[str(log)] == 3000 and t.stats.bytes[str(log)] == 33000
    assert t.stats.lag[str(log)] == 0


def test_line_longer_than_the_budget_still_arrives_whole(tmp_path):
    log = tmp_path / "a.log"
    long = "x" * 5000
    write(log, "a", long, "b")
    t = Tailer([str(log)], from_beginning=True, chunk_size=64, max_read_bytes=700)
    assert read_all(t)[0] == [b"a", long.encode(), b"b"]


def test_rotations_during_a_bounded_backlog_lose_and_repeat_nothing(tmp_path):
    log = tmp_path / "access.log"
    write(log, *[f"a{i:04d}" for i in range(2000)])
    t = Tailer([str(log)], from_beginning=True, chunk_size=128, max_read_bytes=600)
    seen = lines_of(t)
    assert t.more
    os.rename(log, tmp_path / "access.log.1")  # rename-and-create mid-backlog
    write(tmp_path / "access.log.1", "a-late")  # still written by the old writer
    write(log, *[f"b{i:04d}" for i in range(1000)])
    seen += lines_of(t)
    assert not any(ln.startswith(b"b") for ln in seen)  # the old file is finished first
    seen += read_all(t)[0]
    with open(log, "r+") as f:  # copytruncate once caught up
        f.truncate(0)
    write(log, *[f"c{i:04d}" for i in range(1000)])
    seen += read_all(t)[0]
    assert seen == ([f"a{i:04d}".encode() for i in range(2000)] + [b"a-late"]
                    + [f"b{i:04d}".encode() for i in range(1000)]
                    + [f"c{i:04d}".encode() for i in range(1000)])
    assert t.stats.rotations == {"rename": 1, "truncate": 1}


def test_checkpoint_while_a_rotated_file_is_being_finished(tmp_path):
    """Positions saved mid-way through a rotated-away file name that file: a restart
    finishes it by inode, then reads the new file from the start."""
    log = tmp_path / "access.log"
    write(log, *[f"a{i:04d}" for i in range(2000)])
    t = Tailer([str(log)], from_beginning=True, chunk_size=128, max_read_bytes=600)
    seen = lines_of(t)
    os.rename(log, tmp_path / "access.log.1")
    write(log, *[f"b{i:04d}" for i in range(500)])
    seen += lines_of(t)  # part of the old file only
    assert t.more and len(seen) < 2000
    state = t.state()
    assert state["files"][str(log)]["ino"] == os.stat(tmp_path / "access.log.1").st_ino
    t.close()
    t2 = Tailer([str(log)], chunk_size=128, max_read_bytes=600)
    t2.restore(state)
    seen += read_all(t2)[0]
    assert seen == ([f"a{i:04d}".encode() for i in range(2000)]
                    + [f"b{i:04d}".encode() for i in range(500)])


def test_budget_is_shared_fairly_between_files(tmp_path):
    for name in ("a", "b"):
        write(tmp_path / f"{name}.log", *[f"{name}{i:04d}" for i in range(1000)])
    t = Tailer([str(tmp_path / "*.log")], from_beginning=True, chunk_size=256,
               max_read_bytes=2000)
    batches = [t.read() for _ in range(4)]
    assert {p for b in batches for p, _ in b} == {str(tmp_path / "a.log"),
                                                 str(tmp_path / "b.log")}
    got = [ln for b in batches for _, lines in b for ln in lines] + read_all(t)[0]
    assert sorted(got) == sorted(f"{n}{i:04d}".encode() for n in "ab" for i in range(1000))


def test_crlf_lines_split_at_every_chunk_boundary(tmp_path):
    log = tmp_path / "a.log"
    with open(log, "wb") as f:
        f.write(b"".join(f"l{i}\r\n".encode() for i in range(50)) + b"tail\r")
    for chunk in (1, 2, 3, 5):
        t = Tailer([str(log)], from_beginning=True, chunk_size=chunk, max_read_bytes=7)
        assert read_all(t)[0] == [f"l{i}".encode() for i in range(50)]
        with open(log, "ab") as f:
            f.write(b"\n")
        assert lines_of(t) == [b"tail"]
        with open(log, "r+b") as f:
            f.truncate(os.path.getsize(log) - 1)
