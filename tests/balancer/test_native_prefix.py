"""The native prefix index (`balancer.policy._native.PrefixIndex`) equals the pure-Python
reference (`balancer.policy.prefix.PrefixIndex`) step for step: same matches, same entries,
same evictions, over random add/match/forget sequences with tiny LRUs and a tiny alphabet
of hashes (so pods share hashes and evict all the time). Also: bad input is refused and
leaves the index as it was, long churn of pods keeps memory bounded, and the native
`block_hashes` (and so its XXH64) equals the reference and the `xxhash` package."""

from __future__ import annotations

import gc
import random
import tracemalloc

import pytest
import xxhash
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from llmtraffic.balancer.policy import _native, prefix

TOP = 2**64 - 1
#: A tiny alphabet: both ends of the range, neighbours, and values that share low bits.
ALPHABET = [0, 1, 2, 3, 7, 2**32, 2**63, 2**63 + 1, TOP - 1, TOP]
ADDRESSES = ["10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000", "pod-é", ""]


def agree(native: _native.PrefixIndex, ref: prefix.PrefixIndex, hashes=ALPHABET,
          addresses=ADDRESSES) -> None:
    """Same size, same entries per pod and, hash by hash, the same holders."""
    assert len(native) == len(ref)
    assert bool(native) == bool(ref)
    for a in addresses:
        assert native.entries(a) == ref.entries(a), a
    for h in hashes:
        assert native.match([h]) == ref.match([h]), h


# ---- differential: hypothesis state machine -------------------------------------------------
hash_lists = st.lists(st.sampled_from(ALPHABET), max_size=12)
limits = st.none() | st.integers(0, 10)


class SameAsReference(RuleBasedStateMachine):
    @initialize(lru=st.integers(0, 8))
    def start(self, lru: int) -> None:
        self.native = _native.PrefixIndex(lru)
        self.ref = prefix.PrefixIndex(lru)

    @rule(address=st.sampled_from(ADDRESSES), hashes=hash_lists, limit=limits,
          as_tuple=st.booleans())
    def add(self, address, hashes, limit, as_tuple) -> None:
        arg = tuple(hashes) if as_tuple else hashes
        if limit is None and as_tuple:
            self.native.add(address, arg)
        else:
            self.native.add(address, arg, limit)
        self.ref.add(address, hashes, limit)

    @rule(hashes=hash_lists)
    def match(self, hashes) -> None:
        assert self.native.match(hashes) == self.ref.match(hashes)

    @rule(address=st.sampled_from(ADDRESSES + ["never-added"]))
    def forget(self, address) -> None:
        self.native.forget(address)
        self.ref.forget(address)

    @rule(lru=st.integers(0, 8))
    def resize(self, lru) -> None:
        self.native.lru_per_pod = lru
        self.ref.lru_per_pod = lru
        assert self.native.lru_per_pod == lru

    @invariant()
    def same(self) -> None:
        agree(self.native, self.ref)


TestSameAsReference = SameAsReference.TestCase
TestSameAsReference.settings = settings(max_examples=300, stateful_step_count=40,
                                        deadline=None)


# ---- differential: long seeded random runs -------------------------------------------------
@pytest.mark.parametrize("seed", range(4))
def test_random_sequences_match_reference(seed):
    rng = random.Random(seed)
    lru = rng.randint(1, 8)
    alphabet = ALPHABET + [rng.getrandbits(64) for _ in range(10)]
    addresses = ADDRESSES + [f"10.1.0.{i}:8000" for i in range(5)]
    native, ref = _native.PrefixIndex(lru_per_pod=lru), prefix.PrefixIndex(lru_per_pod=lru)
    sent = [[]]
    for step in range(3000):
        roll = rng.random()
        hashes = [rng.choice(alphabet) for _ in range(rng.randint(0, 12))]
        if roll < 0.55:
            a = rng.choice(addresses)
            limit = rng.choice([None, None, rng.randint(0, 10)])
            native.add(a, hashes, limit=limit)
            ref.add(a, hashes, limit)
            sent = (sent + [hashes])[-20:]
        elif roll < 0.9:
            if rng.random() < 0.5:  # long leading runs: something recently sent, then more
                hashes = rng.choice(sent) + hashes
            assert native.match(hashes) == ref.match(hashes)
        elif roll < 0.97:
            a = rng.choice(addresses)
            native.forget(a)
            ref.forget(a)
        else:
            native.lru_per_pod = ref.lru_per_pod = rng.randint(0, 8)
        if step % 10 == 0:
            agree(native, ref, alphabet, addresses)
    agree(native, ref, alphabet, addresses)


def test_leading_runs_across_many_pods():
    """Chains of hashes shared by many pods to different depths: match reports each pod's
    own leading run, including the pods that drop out part way."""
    rng = random.Random(7)
    chain = [rng.getrandbits(64) for _ in range(40)]
    native, ref = _native.PrefixIndex(1000), prefix.PrefixIndex(1000)
    for i in range(300):
        a = f"10.2.{i // 250}.{i % 250}:8000"
        depth = rng.randint(0, 40)
        extra = [rng.getrandbits(64) for _ in range(rng.randint(0, 3))]
        for idx in (native, ref):
            idx.add(a, chain[:depth] + extra)
    for cut in range(41):
        got = native.match(chain[:cut])
        assert got == ref.match(chain[:cut])
        if cut:
            assert got and max(got.values()) <= cut
    # a block nobody was sent at position 5: every run stops there
    holed = chain[:5] + [12345] + chain[5:]
    assert native.match(holed) == ref.match(holed)
    assert max(native.match(holed).values()) == 5


@pytest.mark.parametrize("seed", range(3))
def test_few_pods_left_among_many_holders(seed):
    """Block 0 held by a few pods, later blocks by most of 300: match leaps through the long
    holder lists (and the pods were interned in shuffled order, so ids interleave)."""
    rng = random.Random(seed)
    chain = [rng.getrandbits(64) for _ in range(12)]
    native, ref = _native.PrefixIndex(100), prefix.PrefixIndex(100)
    addresses = [f"10.3.{i // 250}.{i % 250}:8000" for i in range(300)]
    rng.shuffle(addresses)
    for a in addresses:
        held = [h for k, h in enumerate(chain) if rng.random() < (0.04 if k == 0 else 0.9)]
        for idx in (native, ref):
            idx.add(a, held)
    for _ in range(50):
        probe = chain[:1] + rng.sample(chain[1:], rng.randint(0, 11))
        got = native.match(probe)
        assert got == ref.match(probe)
        assert len(got) < 40
    assert native.match(chain) == ref.match(chain) != {}


def test_inputs_are_any_iterable_and_keywords_work():
    native, ref = _native.PrefixIndex(lru_per_pod=4), prefix.PrefixIndex(lru_per_pod=4)
    native.add(address="a", hashes=iter([1, 2, 3]), limit=3)
    ref.add("a", [1, 2, 3], limit=3)
    native.add("b", (1, 2))
    ref.add("b", (1, 2))
    assert native.match(hashes=(x for x in [1, 2, 3])) == ref.match([1, 2, 3]) \
        == {"a": 3, "b": 2}
    assert native.match([]) == ref.match([]) == {}
    assert native.match([True, 2]) == ref.match([True, 2])  # bool is an int, as in the reference

    class Address(str):
        pass
    native.add(Address("c"), [1])
    ref.add("c", [1])
    agree(native, ref, [1, 2, 3], ["a", "b", "c"])
    assert all(type(k) is str for k in native.match([1]))
    native.forget(address=Address("c"))
    ref.forget("c")
    assert native.entries(address="c") == 0
    agree(native, ref, [1, 2, 3], ["a", "b", "c"])


def test_reentrant_calls_from_the_hashes_argument():
    """Iterating `hashes` (a generator) and freeing its items (an int subclass with a
    finalizer) run Python code that uses the same index. The native index runs the first
    before it changes anything and the second after, and stays consistent."""
    native, ref = _native.PrefixIndex(8), prefix.PrefixIndex(8)
    for idx in (native, ref):
        idx.add("a", [1, 2])
        idx.add("b", [2, 3])

    class Block(int):
        def __del__(self):
            native.forget("a")
            native.add("c", [1, 7, 8])
            native.match([1, 2, 3])

    def hashes():
        native.forget("b")
        native.add("a", [9])
        yield Block(1)
        yield 4
    native.add("a", hashes())
    # the same calls in the order the native index makes them
    ref.forget("b")
    ref.add("a", [9])
    ref.add("a", [1, 4])
    ref.forget("a")
    ref.add("c", [1, 7, 8])
    agree(native, ref, [1, 2, 3, 4, 7, 8, 9], ["a", "b", "c"])

    def probe():
        native.add("d", [7, 8, 50])
        yield Block(7)
        yield 8
    expected = {"c": 2, "d": 2}
    assert native.match(probe()) == expected  # computed before the finalizer ran
    ref.add("d", [7, 8, 50])
    ref.forget("a")
    ref.add("c", [1, 7, 8])
    agree(native, ref, [1, 2, 3, 4, 7, 8, 9, 50], ["a", "b", "c", "d"])


def test_lru_per_pod_attribute():
    assert _native.PrefixIndex().lru_per_pod == prefix.PrefixIndex().lru_per_pod == 31_250
    idx = _native.PrefixIndex(lru_per_pod=5)
    assert idx.lru_per_pod == 5
    idx.add("a", range(10))
    assert idx.entries("a") == 5
    idx.lru_per_pod = 2
    assert idx.lru_per_pod == 2
    idx.add("a", [])  # shrinks on the next add, as the reference does
    assert idx.entries("a") == 2 and idx.match([8, 9]) == {"a": 2}
    idx.lru_per_pod = 2**70  # beyond any size: no bound, read back as set
    assert idx.lru_per_pod == 2**70
    idx.add("a", range(100, 200))
    assert idx.entries("a") == 102
    idx.add("a", [], limit=2**80)
    assert idx.entries("a") == 102


# ---- bad input --------------------------------------------------------------------------
def snapshot(idx) -> tuple:
    return (len(idx), tuple(idx.entries(a) for a in ADDRESSES),
            tuple(sorted(idx.match([h]).items()) for h in ALPHABET))


BAD_CALLS = [
    (TypeError, "match", ([1, "x"],), {}),
    (TypeError, "match", ([1, 2.0],), {}),
    (TypeError, "match", ([None],), {}),
    (TypeError, "match", (5,), {}),
    (OverflowError, "match", ([1, -1],), {}),
    (OverflowError, "match", ([2**64],), {}),
    (OverflowError, "match", ([2**200],), {}),
    (TypeError, "add", ("10.0.0.1:8000", [1, 2, "3"]), {}),
    (TypeError, "add", ("10.0.0.1:8000", [TOP, 1.5]), {}),
    (OverflowError, "add", ("10.0.0.1:8000", [0, 1, -1]), {}),
    (OverflowError, "add", ("10.0.0.1:8000", [0, 1, 2**64]), {}),
    (OverflowError, "add", ("new-pod", [0, -2**100]), {}),
    (TypeError, "add", ("10.0.0.1:8000", None), {}),
    (TypeError, "add", (1, [1]), {}),
    (TypeError, "add", (b"10.0.0.1:8000", [1]), {}),
    (TypeError, "add", (None, [1]), {}),
    (TypeError, "add", ("10.0.0.1:8000", [1], 1.5), {}),
    (TypeError, "add", ("10.0.0.1:8000", [1], "3"), {}),
    (ValueError, "add", ("10.0.0.1:8000", [1], -1), {}),
    (TypeError, "add", ("10.0.0.1:8000", [1]), {"lmt": 3}),
    (TypeError, "add", ("10.0.0.1:8000", [1]), {"hashes": [2]}),
    (TypeError, "add", ("10.0.0.1:8000",), {}),
    (TypeError, "add", (), {}),
    (TypeError, "add", ("10.0.0.1:8000", [1], None, 4), {}),
    (TypeError, "forget", (3,), {}),
    (TypeError, "forget", (), {}),
    (TypeError, "forget", ("a", "b"), {}),
    (TypeError, "entries", (None,), {}),
    (TypeError, "entries", (), {}),
    (TypeError, "match", (), {}),
    (TypeError, "match", ([1], [2]), {}),
]


@pytest.mark.parametrize("exc,method,args,kwargs", BAD_CALLS,
                         ids=[f"{m}-{i}" for i, (_, m, _, _) in enumerate(BAD_CALLS)])
def test_bad_input_is_refused_and_changes_nothing(exc, method, args, kwargs):
    native, ref = _native.PrefixIndex(lru_per_pod=4), prefix.PrefixIndex(lru_per_pod=4)
    for a, hs in zip(ADDRESSES, ([0, 1, 2], [0, 1, TOP], [2**63, 0], [7], [])):
        native.add(a, hs)
        ref.add(a, hs)
    before = snapshot(native)
    with pytest.raises(exc) as info:
        getattr(native, method)(*args, **kwargs)
    assert "PrefixIndex" in str(info.value) or method in str(info.value)
    assert snapshot(native) == before
    # still usable, still the reference's twin
    for idx in (native, ref):
        idx.add("10.0.0.1:8000", [0, 1, 3, 7])
        idx.add("new-pod", [0, TOP], limit=1)
        idx.forget("10.0.0.2:8000")
    agree(native, ref, ALPHABET, ADDRESSES + ["new-pod"])
    assert native.match([0, 1, 3, 7]) == ref.match([0, 1, 3, 7])


def test_bad_hash_messages_say_where():
    idx = _native.PrefixIndex()
    with pytest.raises(OverflowError, match=r"hashes\[2\] is negative"):
        idx.add("a", [1, 2, -5])
    with pytest.raises(OverflowError, match=r"hashes\[0\] is >= 2\*\*64"):
        idx.match([2**64])
    with pytest.raises(TypeError, match=r"hashes\[1\] must be an int, not str"):
        idx.match([1, "x"])
    with pytest.raises(TypeError, match="address must be str, not int"):
        idx.add(5, [1])
    assert len(idx) == 0 and idx.entries("a") == 0


def test_bad_constructor_and_attribute():
    with pytest.raises(ValueError):
        _native.PrefixIndex(-1)
    with pytest.raises(TypeError):
        _native.PrefixIndex("10")
    with pytest.raises(TypeError):
        _native.PrefixIndex(lru=10)
    with pytest.raises(TypeError):
        _native.PrefixIndex(1, 2)
    idx = _native.PrefixIndex(3)
    with pytest.raises(TypeError):
        idx.lru_per_pod = 2.5
    with pytest.raises(ValueError):
        idx.lru_per_pod = -3
    with pytest.raises(AttributeError):
        del idx.lru_per_pod
    assert idx.lru_per_pod == 3
    idx.add("a", range(10))
    assert idx.entries("a") == 3


def test_generator_error_leaves_index_unchanged():
    native = _native.PrefixIndex(4)
    native.add("a", [1, 2])

    def boom():
        yield 3
        raise RuntimeError("from the generator")
    with pytest.raises(RuntimeError):
        native.add("a", boom())
    assert native.entries("a") == 2 and native.match([1, 2, 3]) == {"a": 2}


# ---- churn and memory ------------------------------------------------------------------
def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def churn(idx, rng: random.Random, rounds: int, live: list[str], serial: list[int],
          ref=None) -> None:
    """Pods come and go (a new address replaces a forgotten one), each add sends 12 blocks:
    4 from a shared set that slowly turns over (so hashes held by many pods die out too),
    the rest unique, with per-pod limits that vary."""
    shared = [rng.getrandbits(64) for _ in range(50)]
    for i in range(rounds):
        if i % 10 == 0:
            shared[rng.randrange(len(shared))] = rng.getrandbits(64)
        if rng.random() < 0.05:
            gone = live.pop(rng.randrange(len(live)))
            idx.forget(gone)
            if ref is not None:
                ref.forget(gone)
            serial[0] += 1
            live.append(f"10.{serial[0] // 65536 % 256}.{serial[0] // 256 % 256}."
                        f"{serial[0] % 256}:{8000 + serial[0] // 16_777_216}")
        a = rng.choice(live)
        hashes = rng.sample(shared, 4) + [rng.getrandbits(64) for _ in range(8)]
        limit = rng.choice([None, 30, 60])
        idx.add(a, hashes, limit)
        if ref is not None:
            ref.add(a, hashes, limit)


def steady(idx, rng: random.Random, live: list[str], serial: list[int]) -> None:
    """Churn until the LRUs are full, then fill every pod with blocks of its own: the node
    array and the hash table reach the most they can ever need (pods x lru_per_pod
    entries), so any later growth is a leak."""
    churn(idx, rng, 20_000, live, serial)
    for a in live:
        idx.add(a, [rng.getrandbits(64) for _ in range(idx.lru_per_pod)])
    assert len(idx) == len(live) * idx.lru_per_pod


def test_churn_keeps_counts_consistent_with_reference():
    """Thousands of adds over hundreds of pods that come and go: the native index and the
    reference agree on size and per-pod entries throughout, and forgetting every pod
    empties the native index."""
    rng = random.Random(11)
    native, ref = _native.PrefixIndex(lru_per_pod=50), prefix.PrefixIndex(lru_per_pod=50)
    live, serial = [f"pod-{i}" for i in range(20)], [0]
    gone_before = set()
    for _ in range(20):
        churn(native, rng, 1000, live, serial, ref)
        assert len(native) == len(ref)
        assert all(native.entries(a) == ref.entries(a) for a in live)
        assert all(0 < native.entries(a) <= 50 for a in live if ref.entries(a))
        assert sum(native.entries(a) for a in live) >= len(native)  # shared count once
        gone_before.update(live)
    assert serial[0] > 500  # hundreds of distinct addresses came and went
    assert len(native) <= 20 * 50
    for a in list(live):
        native.forget(a)
    assert len(native) == 0
    assert all(native.entries(a) == 0 for a in gone_before)
    assert native.match([0]) == {}
    native.add("again", [1, 2])  # usable after being emptied
    assert native.match([1, 2]) == {"again": 2} and len(native) == 2


def test_memory_stays_bounded_under_churn():
    """Once every LRU is full, many more rounds of churn (thousands of pods coming and
    going, hundreds of thousands of blocks) take no more memory: evicted and forgotten
    entries, pod ids and addresses are all recycled or released. Keeping the entries of
    every forgotten pod would grow RSS by about 8 MB here."""
    rng = random.Random(3)
    idx = _native.PrefixIndex(lru_per_pod=60)
    live, serial = [f"pod-{i}" for i in range(40)], [0]
    steady(idx, rng, live, serial)
    gc.collect()
    before = rss_bytes()
    for _ in range(6):
        churn(idx, rng, 30_000, live, serial)
    gc.collect()
    grown = rss_bytes() - before
    assert serial[0] > 8000  # thousands of distinct addresses came and went
    assert len(idx) <= 40 * 60
    assert grown < 4 * 2**20, f"RSS grew {grown / 2**20:.1f} MB at steady state"
    # and indexes that are dropped give everything back
    before = rss_bytes()
    blocks = [rng.getrandbits(64) for _ in range(20_000)]
    for _ in range(30):  # each holds 20,000 entries, about 1.2 MB
        big = _native.PrefixIndex(lru_per_pod=2000)
        for i in range(10):
            big.add(f"p{i}", blocks[i * 2000:(i + 1) * 2000])
        big.forget("p0")
        big.add("p1", blocks[:10])
        assert len(big) == 18_000 and big.match(blocks[:3]) == {"p1": 3}
        del big
    gc.collect()
    grown = rss_bytes() - before
    assert grown < 8 * 2**20, f"RSS grew {grown / 2**20:.1f} MB over dropped indexes"


def test_traced_memory_is_flat_under_churn():
    """The same, to the byte: tracemalloc sees the index's own allocations (PyMem) and the
    address strings and ids it keeps. Keeping one small object per forgotten pod (an
    address, an id that is never reused) would show up as hundreds of KB here."""
    rng = random.Random(4)
    idx = _native.PrefixIndex(lru_per_pod=60)
    live, serial = [f"pod-{i}" for i in range(40)], [0]
    steady(idx, rng, live, serial)
    tracemalloc.start()
    try:
        churn(idx, rng, 10_000, live, serial)  # warm up under tracing
        gc.collect()
        before, _ = tracemalloc.get_traced_memory()
        first = serial[0]
        churn(idx, rng, 60_000, live, serial)
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert serial[0] - first > 2000
    assert after - before < 64 * 1024, f"traced memory grew {after - before} bytes"


# ---- block_hashes and XXH64 ----------------------------------------------------------------
def random_text(rng: random.Random, n: int, kind: str) -> str:
    if kind == "ascii":
        return "".join(chr(rng.randrange(32, 127)) for _ in range(n))
    if kind == "latin":
        return "".join(chr(rng.randrange(0, 256)) for _ in range(n))
    if kind == "wide":  # 2-, 3- and 4-byte UTF-8, and lone surrogates
        pool = ["é", "ß", "中", "文", "😀", "\U0010ffff", "\ud800", "\udfff", "a", "\n"]
        return "".join(rng.choice(pool) for _ in range(n))
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["ascii", "latin", "wide"])
def test_block_hashes_match_reference(kind):
    rng = random.Random(kind)
    for n in [0, 1, 5, 63, 64, 127, 128, 129, 300, 1000, 5000]:
        prompt = random_text(rng, n, kind)
        model = random_text(rng, rng.randint(0, 40), "ascii" if kind == "wide" else kind)
        for block in (1, 3, 31, 32, 33, 64, 128, 1000):
            for max_blocks in (0, 1, 2, 7, 256):
                assert _native.block_hashes(model, prompt, block, max_blocks) == \
                    prefix.block_hashes(model, prompt, block, max_blocks), (n, block)
        assert _native.block_hashes(model, prompt) == prefix.block_hashes(model, prompt)


def test_block_hashes_beyond_max_blocks():
    rng = random.Random(5)
    prompt = random_text(rng, prefix.BLOCK_BYTES * prefix.MAX_BLOCKS + 500, "ascii")
    got = _native.block_hashes("meta-llama/Llama-2-7b-hf", prompt)
    assert len(got) == prefix.MAX_BLOCKS
    assert got == prefix.block_hashes("meta-llama/Llama-2-7b-hf", prompt)
    assert _native.block_hashes("m", prompt, 128, 10) == prefix.block_hashes("m", prompt)[:10]


def test_xxh64_equals_xxhash_package_for_lengths_0_to_300():
    """One block spanning the whole prompt is xxh64(prompt, seed=xxh64(model)): every
    length (all of XXH64's tail paths and its 32-byte stripes), as model and as prompt."""
    rng = random.Random(9)
    for n in range(301):
        model = random_text(rng, n, "latin")
        prompt = random_text(rng, n + 1, "latin")
        data, seed = prompt.encode(), xxhash.xxh64_intdigest(model.encode())
        assert _native.block_hashes(model, prompt, len(data), 1) == \
            [xxhash.xxh64_intdigest(data, seed)], n
        # an ASCII prompt takes the no-copy path
        prompt = random_text(rng, n + 1, "ascii")
        assert _native.block_hashes(model, prompt, n + 1, 1) == \
            [xxhash.xxh64_intdigest(prompt.encode(), seed)], n
