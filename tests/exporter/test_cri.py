"""Kubernetes container log files: CRI lines (partial P parts joined, split across reads and
across kubelet's rotation, while running and while the exporter is down) and Docker's
json-file, both recognised per file; pod, namespace and container from the file name into the
enriched log and, with --dimensions, the counter labels. The kubelet layout is built in a
temporary directory: /var/log/containers/<pod>_<ns>_<container>-<id>.log symlinks into
/var/log/pods/<ns>_<pod>_<uid>/<container>/0.log, rotated by renaming 0.log."""

from __future__ import annotations

import os
from pathlib import Path

import orjson

from llmtraffic.exporter.app import ExporterApp, ExporterOptions
from llmtraffic.exporter.cri import detect, origin_of
from llmtraffic.exporter.pipeline import Origin

TS = "2026-12-02T05:40:00.123456789Z"
CID = "4f" * 32


class Kubelet:
    """One container's log as kubelet and the CRI runtime lay it out."""

    def __init__(self, root: Path, pod: str = "istio-ingressgateway-7d9f-abcde",
                 ns: str = "istio-system", container: str = "istio-proxy") -> None:
        self.dir = root / "pods" / f"{ns}_{pod}_0b6c3f1e-1111-2222-3333-444455556666" / container
        self.dir.mkdir(parents=True)
        self.file = self.dir / "0.log"
        self.file.touch()
        links = root / "containers"
        links.mkdir(exist_ok=True)
        self.link = links / f"{pod}_{ns}_{container}-{CID}.log"
        os.symlink(self.file, self.link)
        self.rotations = 0

    def write(self, data: bytes) -> None:
        with open(self.file, "ab") as fh:
            fh.write(data)

    def rotate(self) -> None:
        self.rotations += 1
        os.rename(self.file, self.dir / f"0.log.20261202-0545{self.rotations:02d}")
        self.file.touch()


def cri(text: bytes, stream: bytes = b"stdout", tag: bytes = b"F") -> bytes:
    return TS.encode() + b" " + stream + b" " + tag + b" " + text + b"\n"


def access_line(i: int) -> bytes:
    return orjson.dumps({"request_model": f"m{i % 2}", "request_prompt_tokens": str(i),
                         "request_completion_tokens": str(2 * i), "response_code": "200",
                         "user_agent": "x" * (i % 50)})


def cri_record(i: int) -> bytes:
    """Every third record split into P parts, as the runtime does for long lines."""
    line = access_line(i)
    if i % 3:
        return cri(line)
    a, b = len(line) // 3, 2 * len(line) // 3
    return cri(line[:a], tag=b"P") + cri(line[a:b], tag=b"P") + cri(line[b:])


def want(n: range) -> dict:
    out: dict[tuple[str, ...], float] = {}
    for i in n:
        out[(f"m{i % 2}",)] = out.get((f"m{i % 2}",), 0) + i
    return out


def app(root: Path, **kw) -> ExporterApp:
    return ExporterApp(ExporterOptions(access_logs=[str(root / "containers" / "*.log")],
                                       listen="127.0.0.1:0", from_beginning=True, **kw))


def drain(a: ExporterApp) -> None:
    a.poll()
    while a.tailer.more:
        a.poll()


def test_names_and_detection() -> None:
    assert origin_of(f"/var/log/containers/gw-1_istio-system_istio-proxy-{CID}.log") == \
        Origin("gw-1", "istio-system", "istio-proxy")
    assert origin_of("/var/log/pods/llm_gw-2_0b6c3f1e-aaaa/envoy/3.log.20261202-054501") == \
        Origin("gw-2", "llm", "envoy")
    assert origin_of("/var/log/envoy/access.log") is None
    assert detect(cri(b'{"a":1}')) == "cri" and detect(cri(b"x", b"stderr", b"P")) == "cri"
    assert detect(b'{"log":"{\\"a\\":1}\\n","stream":"stdout","time":"t"}') == "docker"
    assert detect(access_line(1)) == "plain" and detect(b"[2026-12-02] GET /") == "plain"


def test_cri_partial_lines_across_reads_and_rotation_with_origin(tmp_path) -> None:
    k = Kubelet(tmp_path)
    enriched = tmp_path / "enriched.log"
    a = app(tmp_path, enriched_log=str(enriched),
            dimensions=("model", "source_namespace", "source_pod"))
    raw = b"".join(cri_record(i) for i in range(300)).splitlines(keepends=True)
    raw += [cri(b"envoy's own log line", b"stderr"), cri(b"not json")]
    for i in range(0, len(raw), 7):  # batches that end between a record's P and F parts
        batch = b"".join(raw[i:i + 7])
        k.write(batch[:len(batch) // 2])  # the runtime's write is read half-way
        a.poll()
        k.write(batch[len(batch) // 2:])
        if i % 28 == 0:
            k.rotate()  # the old file is finished before the new one is read
        else:
            a.poll()
    tail = access_line(300)
    k.write(cri(tail[:40], tag=b"P"))
    drain(a)
    k.rotate()  # P at the end of the old file, its F at the start of the new one
    k.write(cri(tail[40:]))
    drain(a)
    a.enricher.close()
    a.tailer.close()
    assert k.rotations > 10 and a.stats.rotations["rename"] == k.rotations
    labels = ("istio-system", "istio-ingressgateway-7d9f-abcde")
    assert a.counters.prompt == {(m, *labels): v for (m,), v in want(range(301)).items()}
    assert a.stats.parse_errors == {"invalid_json": 1}  # stderr skipped, "not json" counted
    first = orjson.loads(enriched.read_bytes().splitlines()[0])
    assert (first["source_pod"], first["source_namespace"], first["source_container"]) == (
        "istio-ingressgateway-7d9f-abcde", "istio-system", "istio-proxy")


def test_kubelet_rotation_and_partial_line_while_the_exporter_is_down(tmp_path) -> None:
    k = Kubelet(tmp_path)
    positions = str(tmp_path / "positions.json")
    a = app(tmp_path, positions=positions)
    k.write(b"".join(cri_record(i) for i in range(100)))
    line = access_line(100)
    k.write(cri(line[:30], tag=b"P"))  # its end comes after the restart
    drain(a)
    a.checkpoint()
    a.tailer.close()
    k.write(cri(line[30:]) + b"".join(cri_record(i) for i in range(101, 150)))
    k.rotate()  # while down: the rest of the old file is found by inode in the pods dir
    k.write(b"".join(cri_record(i) for i in range(150, 200)))
    b = app(tmp_path, positions=positions)
    b._restore()
    drain(b)
    b.tailer.close()
    assert b.counters.prompt == want(range(200))
    assert sum(b.counters.requests.values()) == 200 and not b.stats.parse_errors


def test_docker_json_file_partial_entries(tmp_path) -> None:
    log = tmp_path / "containers" / f"gw-0_llm_envoy-{CID}.log"
    log.parent.mkdir()
    out = []
    for i in range(50):
        text = access_line(i).decode() + "\n"
        parts = [text] if i % 4 else [text[:25], text[25:60], text[60:]]  # 16 KiB splits
        out += [orjson.dumps({"log": p, "stream": "stdout", "time": TS}) + b"\n"
                for p in parts]
    out.append(orjson.dumps({"log": "warning\n", "stream": "stderr", "time": TS}) + b"\n")
    log.write_bytes(b"".join(out))
    a = app(tmp_path, dimensions=("model", "source_container"))
    drain(a)
    a.tailer.close()
    assert a.counters.prompt == {(m, "envoy"): v for (m,), v in want(range(50)).items()}
    assert not a.stats.parse_errors


def test_a_deleted_container_log_is_forgotten(tmp_path) -> None:
    k = Kubelet(tmp_path)
    a = app(tmp_path)
    k.write(cri_record(1))
    drain(a)
    assert str(k.link) in a.tailer.files
    os.unlink(k.link)
    os.unlink(k.file)  # the pod is gone
    drain(a)
    assert not a.tailer.files
    assert a.counters.prompt == want(range(1, 2))
