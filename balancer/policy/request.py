"""What a policy sees of one request, and what it answers: `Pick` or `Shed`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Protocol

from llmtraffic.contracts.store import Snapshot


@dataclass(slots=True)
class LLMRequest:
    model: str  # the `model` the client asked for
    target_model: str  # after the InferenceModel split (what the pod will see)
    adapter: str | None  # LoRA adapter to run on, None for the base model
    prompt: str
    #: estimate in the served tokenizer's tokens (the balancer learns its characters per
    #: token from the pods' usage; 4 until then)
    prompt_tokens: int
    criticality: str = "Standard"  # Critical | Standard | Sheddable
    pool: str = ""
    #: InferenceObjective priority, higher first (GIE); the router sets `criticality` to
    #: match (< 0 Sheddable: shed when the pool is saturated, as GIE does)
    priority: int = 0


@dataclass(slots=True)
class Pick:
    address: str  # "ip:port" of the chosen pod
    fallbacks: tuple[str, ...]  # next best pods, for retries
    reason: str  # short, loggable: which scorer decided


@dataclass(slots=True)
class Shed:
    status: int  # 429 shed (saturated), 503 no endpoint
    reason: str
    retry_after: float | None = None


class Policy(Protocol):
    """A pure picker: no I/O, no clock reads except `snapshot.now`, seeded randomness.
    Besides `pick`, two hooks the balancer calls (`PolicyHooks` has their defaults)."""

    name: str

    def pick(self, request: LLMRequest, snapshot: Snapshot) -> Pick | Shed: ...

    def forget(self, addresses: Collection[str]) -> None:
        """These pods left the pools: drop what the policy remembers of them."""

    def startup_warning(self) -> str | None:
        """What an operator should hear when a balancer starts with this policy, if any."""


class PolicyHooks:
    """The hooks' defaults: nothing remembered per pod, nothing to warn of."""

    def forget(self, addresses: Collection[str]) -> None:
        return None

    def startup_warning(self) -> str | None:
        return None


def no_endpoint(snapshot: Snapshot) -> Shed:
    return Shed(503, "no ready pod in the pool" if not snapshot.pods else "no pod could serve")
