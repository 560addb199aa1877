"""Filters: which pods may take a request at all, and when a pool counts as saturated."""

from __future__ import annotations

from llmtraffic.contracts.store import PodState


def ready(pods: tuple[PodState, ...]) -> list[PodState]:
    return [p for p in pods if p.pod.ready]


def usable(pods: tuple[PodState, ...]) -> list[PodState]:
    """What any policy may pick from: ready pods whose last scrape or connect did not fail;
    every ready pod when none qualifies (last resort). `last_error` is set by a failed
    scrape or a failed connect (the store) and by an open circuit (the router's breaker).
    Stale-but-not-failing pods stay: the balancer then judges them by in-flight counts."""
    return [p for p in pods if p.pod.ready and p.last_error is None] or ready(pods)


def has_room(p: PodState, queue_threshold: float, kv_threshold: float) -> bool:
    """Fresh metrics with queue <= threshold and KV usage <= threshold."""
    return p.fresh and p.queue <= queue_threshold and p.kv_usage <= kv_threshold


def saturated(pods: list[PodState], queue_threshold: float, kv_threshold: float) -> bool:
    """GIE's rule: saturated when no candidate pod `has_room`."""
    for p in pods:
        if has_room(p, queue_threshold, kv_threshold):
            return False
    return True


def with_room(pods: list[PodState], queue_threshold: float,
              kv_threshold: float) -> list[PodState]:
    """Where a Sheddable request may go: the pods that `has_room` (GIE v0.x sends a
    sheddable request only to a pod with capacity, and drops it when there is none)."""
    return [p for p in pods if has_room(p, queue_threshold, kv_threshold)]
