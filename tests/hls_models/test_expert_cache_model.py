"""ExpertCacheModel: each policy on hand-worked traces, invariants on random traces, errors."""

import random

import pytest

from moeforge import AccelConfig
from moeforge.hls_models.expert_cache import CacheAccess, ExpertCacheModel


def outcomes(model, trace):
    return [(a.hit, a.slot, a.evicted) for a in model.run(trace)]


def test_empty_slots_fill_lowest_first():
    m = ExpertCacheModel(8, 3, "lru")
    assert outcomes(m, [5, 2, 5, 7]) == [(False, 0, None), (False, 1, None), (True, 0, None),
                                         (False, 2, None)]
    m.invalidate()                                   # forgets everything: refills from slot 0
    assert outcomes(m, [2, 5]) == [(False, 0, None), (False, 1, None)]


def test_lru_hand_worked():
    # 0→s0, 1→s1, 0 hit (s0 used at t=2), 2 evicts s1 (last use t=1), 1 evicts s0 (t=2 < t=3)
    m = ExpertCacheModel(4, 2, "lru")
    assert m.run([0, 1, 0, 2, 1]) == [
        CacheAccess(0, False, 0), CacheAccess(1, False, 1), CacheAccess(0, True, 0),
        CacheAccess(2, False, 1, 1), CacheAccess(1, False, 0, 0)]
    assert (m.hits, m.misses) == (1, 4)


def test_lfu_differs_from_lru():
    # e0 used three times: lfu keeps it, lru evicts it as the oldest
    trace = [0, 0, 0, 1, 2, 1]
    assert outcomes(ExpertCacheModel(4, 2, "lfu"), trace) == [
        (False, 0, None), (True, 0, None), (True, 0, None), (False, 1, None), (False, 1, 1),
        (False, 1, 2)]
    assert outcomes(ExpertCacheModel(4, 2, "lru"), trace) == [
        (False, 0, None), (True, 0, None), (True, 0, None), (False, 1, None), (False, 0, 0),
        (True, 1, None)]


def test_lfu_tie_goes_to_oldest_use():
    m = ExpertCacheModel(4, 2, "lfu")
    assert outcomes(m, [1, 0, 2]) == [(False, 0, None), (False, 1, None), (False, 0, 1)]


def test_lfu_counts_survive_eviction():
    # c0=2; 1 (c1=1) → s1; 2 evicts e1 (c1=1 < c0=2); 1 again (c1=2) evicts e2 (c2=1);
    # 2 again (c2=2): c0 = c1 = 2, tie → the older last use, s0 (t=1) before s1 (t=4).
    # Had e1's count restarted at its refill (c1=1), the victim would be s1.
    m = ExpertCacheModel(4, 2, "lfu")
    assert outcomes(m, [0, 0, 1, 2, 1, 2]) == [
        (False, 0, None), (True, 0, None), (False, 1, None), (False, 1, 1), (False, 1, 2),
        (False, 0, 0)]
    assert m.counts[:3] == [2, 2, 2]
    m.invalidate()
    assert m.counts == [0] * 4


def test_lfu_counts_saturate():
    # 70000 uses of e0 and 66000 of e1 both saturate at 65535: the tie goes to the older use
    # (e0's slot); with unbounded counts e1 (fewer uses) would be the victim
    m = ExpertCacheModel(3, 2, "lfu")
    m.run([0] * 70000 + [1] * 66000)
    assert m.counts[:2] == [65535, 65535]
    assert m.access(2) == CacheAccess(2, False, 0, 0)


def test_pinned_never_evicted():
    m = ExpertCacheModel(6, 2, "pinned", pinned=(0,))
    assert outcomes(m, [0, 1, 2, 3, 1, 0]) == [
        (False, 0, None), (False, 1, None), (False, 1, 1), (False, 1, 2), (False, 1, 3),
        (True, 0, None)]


def test_pinned_expert_is_normal_until_resident():
    # pinned e4 is not resident: the LRU victim is any slot; once e4 is in, its slot stays
    m = ExpertCacheModel(6, 3, "pinned", pinned=(4,))
    assert outcomes(m, [0, 1, 2, 3, 4, 5, 1, 0]) == [
        (False, 0, None), (False, 1, None), (False, 2, None), (False, 0, 0), (False, 1, 1),
        (False, 2, 2), (False, 0, 3), (False, 2, 5)]


@pytest.mark.parametrize("policy", ["lru", "lfu", "pinned"])
def test_random_trace_invariants(policy):
    rng = random.Random(7)
    for _ in range(40):
        E = rng.randint(2, 12)
        S = rng.randint(2 if policy == "pinned" else 1, E)
        pinned = tuple(rng.sample(range(E), rng.randint(1, S - 1))) if policy == "pinned" else ()
        m = ExpertCacheModel(E, S, policy, pinned)
        held = [None] * S                              # independent slot table
        last = {}
        for t in range(200):
            e = rng.randrange(E)
            a = m.access(e)
            assert a.expert == e and 0 <= a.slot < S
            if e in held:
                assert a.hit and held[a.slot] == e and a.evicted is None
            else:
                assert not a.hit
                if None in held:
                    assert a.slot == held.index(None) and a.evicted is None
                else:
                    assert a.evicted == held[a.slot] is not None
                    assert a.evicted not in pinned
                    if policy != "lfu":                 # the least recently used candidate
                        cands = [s for s in range(S) if held[s] not in pinned]
                        assert a.slot == min(cands, key=lambda s: last[s])
                held[a.slot] = e
            last[a.slot] = t
            assert len({x for x in held if x is not None}) == sum(x is not None for x in held)
        assert m.hits + m.misses == 200


def test_from_config_and_counters():
    cfg = AccelConfig(n_experts=8, cache_slots=3, cache_policy="pinned", pinned_experts=(5, 6))
    m = ExpertCacheModel.from_config(cfg)
    assert (m.n_experts, m.slots, m.policy, m.pinned) == (8, 3, "pinned", (5, 6))
    m.run([1, 1, 2])
    m.invalidate()
    m.run([1])
    assert (m.hits, m.misses) == (1, 3)          # invalidate keeps the counters
    m.clear_counters()
    assert (m.hits, m.misses) == (0, 0)


@pytest.mark.parametrize("args, exc, match", [
    ((0, 1, "lru"), ValueError, r"n_experts must be in \[1, 1024\], not 0"),
    ((4, 5, "lru"), ValueError, r"slots must be in \[1, 4\], not 5"),
    ((4, 2, "mru"), ValueError, "policy must be one of lru, lfu, pinned, not 'mru'"),
    ((4, 2, "pinned"), ValueError, "pinned must name at least one expert"),
    ((4, 2, "pinned", (0, 1)), ValueError, r"at most slots - 1 = 1 experts"),
    ((4, 3, "pinned", (1, 1)), ValueError, "must not repeat"),
    ((4, 3, "pinned", (4,)), ValueError, r"pinned expert must be in \[0, 3\], not 4"),
    ((4, 2, "lru", (1,)), ValueError, "pinned is only used with policy='pinned'"),
    ((4, 2, "lru", 3), TypeError, "pinned must be a sequence"),
    ((4.0, 2, "lru"), TypeError, "n_experts must be an integer"),
])
def test_bad_arguments(args, exc, match):
    with pytest.raises(exc, match=match):
        ExpertCacheModel(*args)


def test_bad_expert():
    m = ExpertCacheModel(4, 2, "lru")
    with pytest.raises(ValueError, match=r"expert must be in \[0, 3\], not 4"):
        m.access(4)
    with pytest.raises(TypeError, match="expert must be an integer"):
        m.access(True)
