"""A newcomer's mistakes on the command line: each is refused at once, in one line that names
the flag and the value, with exit status 2; nothing starts and nothing prints a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmtraffic.cli import main

CASES = [
    (["demo", "--load", "90"], "--load 90: give a fraction of capacity above 0 and at most 2"),
    (["demo", "--load", "0"], "--load 0: give a fraction of capacity"),
    (["demo", "--out", "/proc/nope"], "--out /proc/nope: cannot write there"),
    (["demo", "--pods", "0"], "--pods 0: must be >= 1"),
    (["demo", "--duration", "-5"], "--duration -5: must be > 0"),
    (["sim", "--base-port", "99999"], "--base-port 99999: pod i listens on base+i"),
    (["exporter", "--access-log", "{tmp}/a.log", "--listen", "127.0.0.1:99999"],
     "--listen 127.0.0.1:99999: the port must be 1-65535"),
]


@pytest.mark.parametrize("argv, said", CASES, ids=[" ".join(a[:3]) for a, _ in CASES])
def test_a_bad_value_is_one_line(argv: list[str], said: str, tmp_path: Path, capsys) -> None:
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    out = capsys.readouterr()
    text = out.out + out.err
    assert said in text and text.count("\n") == 1 and "Traceback" not in text, text


@pytest.mark.parametrize("bench", ["routing", "live"])
def test_a_load_given_as_a_percentage_is_a_usage_error(bench: str, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["bench", bench, "--load", "90"])
    assert e.value.code == 2
    assert "'90': give a fraction of capacity above 0 and at most 2, e.g. 0.9 for 90%" in \
        capsys.readouterr().err
