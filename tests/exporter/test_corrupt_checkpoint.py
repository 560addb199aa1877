"""A corrupt checkpoint (positions file): wrong types, a counter value that is not a number,
a histogram of the wrong length, negative offsets are refused at start with the field that
is wrong and what to do (no traceback, never a /metrics that answers 500 for ever); an
offset past the end of the same file resumes at its end instead of counting it twice."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from llmtraffic.exporter.app import ExporterApp, ExporterOptions

pytestmark = pytest.mark.e2e


def line(i: int) -> bytes:
    return orjson.dumps({"request_id": f"r{i}", "response_code": 200, "model": "m",
                         "prompt_tokens": 1, "completion_tokens": 2}) + b"\n"


def options(tmp_path: Path) -> ExporterOptions:
    return ExporterOptions(access_logs=[str(tmp_path / "access.log")], listen="127.0.0.1:0",
                           positions=str(tmp_path / "positions.json"), from_beginning=True)


async def run_once(tmp_path: Path) -> ExporterApp:
    """Start, read what is there, stop (which saves the checkpoint)."""
    app = ExporterApp(options(tmp_path))
    await app.start()
    await app.stop()
    return app


@pytest.fixture
async def saved(tmp_path: Path) -> dict:
    (tmp_path / "access.log").write_bytes(line(1) + line(2))
    await run_once(tmp_path)
    return orjson.loads((tmp_path / "positions.json").read_bytes())


def corrupt(data: dict, where: str, value: object, log: str) -> dict:
    """`data` with the field at `where` (dotted; `file.` for the followed file's) set."""
    node, keys = data, where.split(".")
    if keys[0] == "file":
        node, keys = data["positions"]["files"][log], keys[1:]
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node[k]
    if isinstance(node, list):
        node[int(keys[-1])] = value
    else:
        node[keys[-1]] = value
    return data


CASES = [
    ("version", "2", "checkpoint version '2' is not 1"),
    ("positions", "x", "positions: input should be a valid dictionary"),
    ("counters.prompt.0.1", "x", "counters.prompt.0.1"),
    ("counters.prompt.0.1", -3, "a count must be a finite number >= 0"),
    ("counters.prompt.0", [["m"]], "counters.prompt.0"),
    ("counters.requests.0.0", "m", "counters.requests.0.0"),
    ("counters.ttft", {"m": [[1, 2], 0.5]}, "a histogram has"),
    ("counters.dimensions", "model", "counters.dimensions"),
    ("enriched_offset", -5, "enriched_offset"),
    ("file.offset", "12", "offset"),
    ("file.fp_len", -1, "fp_len"),
]


@pytest.mark.parametrize("where,value,words", CASES, ids=[f"{c[0]}={c[1]!r}" for c in CASES])
async def test_a_corrupt_field_is_refused_naming_it(where, value, words, saved, tmp_path):
    data = corrupt(saved, where, value, str(tmp_path / "access.log"))
    (tmp_path / "positions.json").write_bytes(orjson.dumps(data))
    app = ExporterApp(options(tmp_path))
    with pytest.raises(ValueError) as e:
        await app.start()
    await app.stop()
    message = str(e.value)
    assert message.startswith(f"{tmp_path / 'positions.json'}: ") and words in message
    assert "move it away" in message


def test_the_command_says_it_in_one_line(saved, tmp_path):
    saved["counters"]["prompt"][0][1] = "x"
    (tmp_path / "positions.json").write_bytes(orjson.dumps(saved))
    proc = subprocess.run(
        [sys.executable, "-m", "llmtraffic.cli", "exporter", "--access-log", "access.log",
         "--positions", "positions.json", "--listen", "127.0.0.1:0"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "counters.prompt.0.1" in proc.stdout + proc.stderr


async def test_an_offset_past_the_end_of_the_same_file_counts_nothing_twice(saved,
                                                                           tmp_path):
    path = str(tmp_path / "access.log")
    saved["positions"]["files"][path]["offset"] = 10**6
    (tmp_path / "positions.json").write_bytes(orjson.dumps(saved))
    with open(path, "ab") as f:
        f.write(line(3))
    app = await run_once(tmp_path)
    # the two lines counted before stay two; the third, written past the wrong offset's
    # reach, is not read twice either
    assert app.counters.requests == {("m", "200"): 2}
    with open(path, "ab") as f:
        f.write(line(4))
    app = await run_once(tmp_path)
    assert app.counters.requests == {("m", "200"): 3}
