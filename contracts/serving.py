"""Small helpers every serving process shares: reading a `--listen host:port`."""

from __future__ import annotations


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--listen {listen!r}: give host:port, e.g. 0.0.0.0:9100")
    return host or "0.0.0.0", int(port)
