"""The pods file: a misspelt key or a bad address is refused with the file and entry named,
never read as zero pods or a pod nobody can reach."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmtraffic.contracts.pods import address_problem, pods_from_file


def _file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "pods.yaml"
    path.write_text(text)
    return str(path)


def test_a_misspelt_key_is_refused_not_read_as_no_pods(tmp_path: Path) -> None:
    path = _file(tmp_path, 'pod:\n- {name: vllm-0, address: "127.0.0.1:8001"}\n')
    with pytest.raises(ValueError, match=r"pods.yaml: a pods file has one key, `pods:`.*"
                       r"found `pod:`"):
        pods_from_file(path)
    with pytest.raises(ValueError, match="found nothing"):
        pods_from_file(_file(tmp_path, ""))


def test_a_bad_address_is_refused_with_its_entry(tmp_path: Path) -> None:
    path = _file(tmp_path, 'pods:\n- {name: a, address: "127.0.0.1:8001"}\n'
                 '- {name: b, address: "127.0.0.1:2300l"}\n')
    with pytest.raises(ValueError, match=r"pods\[1\]: address '127.0.0.1:2300l': the port "
                       r"must be a number from 1 to 65535"):
        pods_from_file(path)


def test_what_an_address_may_be(tmp_path: Path) -> None:
    good = ("127.0.0.1:8000", "vllm-0", "vllm-0.ns.svc:8000", "[::1]:8000", "::1", "h:65535")
    bad = ("127.0.0.1:2300l", ":8000", "h:0", "h:65536", "[::1]x", "h:")
    assert [address_problem(a) for a in good] == [None] * len(good)
    assert all(address_problem(a) for a in bad)
    path = _file(tmp_path, "pods:\n" + "".join(f'- {{address: "{a}"}}\n' for a in good))
    assert [p.address for p in pods_from_file(path)] == list(good)


def test_pods_without_a_pool_are_said_where_no_inferencepool_names_it(tmp_path: Path,
                                                                      caplog) -> None:
    from llmtraffic.contracts.pods import require_ports

    path = _file(tmp_path, 'pods:\n- {name: a, address: "127.0.0.1:8001", labels: {app: x}}\n'
                 '- {name: b, address: "127.0.0.1:8002", pool: x}\n')
    require_ports(pods_from_file(path), path)
    assert "1 pods have no `pool:` (a)" in caplog.text and 'pool=""' in caplog.text
