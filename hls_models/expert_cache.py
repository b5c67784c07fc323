"""Reference model of the expert cache's replacement policy (`moeforge.rtl.memory.expert_cache`).

The cache holds ``slots`` experts' weight images. Requests are processed strictly in order, one at
a time; "time" is a request's index since construction or the last `invalidate`. Both this model
and the RTL decide every request the same way, so the hit/miss, slot and victim of each request
are independent of timing and the RTL's grants can be compared with `run` using ``==``:

* **hit**: the expert is resident in some slot (its last use becomes now);
* **miss**: the target is the lowest-index slot never filled since the last invalidate, if any;
  otherwise the policy's victim over all filled slots:

  - ``lru``: the slot with the oldest last use (the last request that hit or filled it);
  - ``lfu``: per-*expert* access counts (``n_experts`` saturating counters, 16 bits; each request
    increments its expert's count before the decision; counts survive eviction and are cleared
    by `invalidate`); the victim holds the expert with the lowest count, ties going to the
    oldest last use;
  - ``pinned``: experts listed in ``pinned`` are never victims once resident; the victim is the
    least recently used of the other slots (``len(pinned) <= slots - 1`` keeps one available).

The RTL also locks slots while the engine reads them and waits for a locked victim instead of
choosing another, which is why locks never change a decision and need no place here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from moeforge.checks import check_int
from moeforge.config import CACHE_POLICIES, AccelConfig

__all__ = ["CacheAccess", "ExpertCacheModel", "COUNT_BITS"]

COUNT_BITS = 16                      # LFU counters saturate at 2^16 - 1 (by default)


@dataclass(frozen=True)
class CacheAccess:
    """The outcome of one request: ``evicted`` is the expert replaced by a miss, or None
    (a hit, or a miss into a never-filled slot)."""

    expert: int
    hit: bool
    slot: int
    evicted: int | None = None


def check_policy(n_experts: int, slots: int, policy: str, pinned) -> tuple[int, ...]:
    """Validate cache parameters as `AccelConfig` does; returns ``pinned`` as a tuple.

    Shared with `moeforge.rtl.expert_cache.ExpertCache` so both accept exactly the same values.

    Raises
    ------
    TypeError, ValueError
        Naming the parameter and the accepted range.
    """
    check_int("n_experts", n_experts, 1, 1024)
    check_int("slots", slots, 1, n_experts)
    if policy not in CACHE_POLICIES:
        raise ValueError(f"policy must be one of {', '.join(CACHE_POLICIES)}, not {policy!r}")
    if isinstance(pinned, (str, bytes)) or not isinstance(pinned, Iterable):
        raise TypeError(f"pinned must be a sequence of expert indices, not {pinned!r}")
    pinned = tuple(pinned)
    for e in pinned:
        check_int("pinned expert", e, 0, n_experts - 1)
    if len(set(pinned)) != len(pinned):
        raise ValueError(f"pinned must not repeat an expert, not {list(pinned)!r}")
    if len(pinned) > slots - 1:
        raise ValueError(f"pinned may hold at most slots - 1 = {slots - 1} experts (one slot stays "
                         f"free for misses), not {len(pinned)}")
    if policy == "pinned" and not pinned:
        raise ValueError("pinned must name at least one expert when policy='pinned'")
    if policy != "pinned" and pinned:
        raise ValueError(f"pinned is only used with policy='pinned', not {policy!r}")
    return pinned


class ExpertCacheModel:
    """Which slot each expert request maps to, and what it evicts (module docstring).

    Parameters
    ----------
    n_experts : int
        Experts that can be requested, in [1, 1024].
    slots : int
        Cache slots ``S``, in [1, n_experts].
    policy : str
        ``lru``, ``lfu`` or ``pinned``.
    pinned : sequence of int
        Experts never evicted (``pinned`` policy only; 1 .. slots-1 distinct experts).
    count_bits : int
        Width of the lfu counters, in [1, 32]: 16 in the design; narrower ones let a test reach
        saturation in a few requests.

    Attributes
    ----------
    hits, misses : int
        Requests since construction or the last `clear_counters`.

    Raises
    ------
    TypeError, ValueError
        For a parameter out of range or not fitting the others.
    """

    def __init__(self, n_experts: int, slots: int, policy: str, pinned: Iterable[int] = (), *,
                 count_bits: int = COUNT_BITS):
        self.pinned = check_policy(n_experts, slots, policy, pinned)
        check_int("count_bits", count_bits, 1, 32)
        self.count_max = (1 << count_bits) - 1
        self.n_experts, self.slots, self.policy = n_experts, slots, policy
        self.clear_counters()
        self.invalidate()

    @classmethod
    def from_config(cls, cfg: AccelConfig) -> ExpertCacheModel:
        """The cache of `cfg`: its ``n_experts``, ``cache_slots``, ``cache_policy`` and
        ``pinned_experts``."""
        if not isinstance(cfg, AccelConfig):
            raise TypeError(f"cfg must be an AccelConfig, not {cfg!r}")
        return cls(cfg.n_experts, cfg.cache_slots, cfg.cache_policy, cfg.pinned_experts)

    def invalidate(self) -> None:
        """Forget every slot and LFU count and restart time (the hit/miss counters go on, as
        the RTL's do: `clear_counters` clears them)."""
        self.resident: list[int | None] = [None] * self.slots     # expert held by each slot
        self.last_use: list[int] = [-1] * self.slots
        self.counts: list[int] = [0] * self.n_experts
        self.time = 0

    def clear_counters(self) -> None:
        """Set `hits` and `misses` to 0."""
        self.hits = 0
        self.misses = 0

    def _victim(self) -> int:
        filled = range(self.slots)
        if self.policy == "lfu":
            return min(filled, key=lambda s: (self.counts[self.resident[s]], self.last_use[s]))
        if self.policy == "pinned":
            filled = [s for s in filled if self.resident[s] not in self.pinned]
        return min(filled, key=lambda s: self.last_use[s])

    def access(self, expert: int) -> CacheAccess:
        """Process one request: hit, or miss with its target slot and evicted expert."""
        check_int("expert", expert, 0, self.n_experts - 1)
        self.counts[expert] = min(self.counts[expert] + 1, self.count_max)
        evicted = None
        if expert in self.resident:
            slot, hit = self.resident.index(expert), True
            self.hits += 1
        else:
            hit = False
            self.misses += 1
            if None in self.resident:
                slot = self.resident.index(None)
            else:
                slot = self._victim()
                evicted = self.resident[slot]
            self.resident[slot] = expert
        self.last_use[slot] = self.time
        self.time += 1
        return CacheAccess(expert, hit, slot, evicted)

    def run(self, trace: Iterable[int]) -> list[CacheAccess]:
        """`access` each expert of `trace` in order."""
        return [self.access(e) for e in trace]
