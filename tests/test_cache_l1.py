"""The L1 tier on its own: which reads in flight may fill it, and how long entries live."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import pytest

from app.cache.invalidation import L1_REFRESH_AHEAD, L1_TTL_SPREAD, WRITTEN_KEPT, L1Tier
from app.cache.local import MISSING
from app.config import Settings
from app.notifier import Notifier

NOW = 1_000.0


@pytest.fixture
def tier(make_settings: Callable[..., Settings]) -> L1Tier:
    # The notifier is only used by start(); serving is switched on by hand instead.
    tier = L1Tier(make_settings(cache_l1_ttl_seconds=10), cast(Notifier, None), lambda: NOW)
    tier.serving = True
    return tier


def test_a_read_overlapping_a_write_of_its_key_does_not_fill(tier: L1Tier) -> None:
    generation = tier.generation
    tier.written(["a"])
    tier.fill("a", "old", None, generation)
    assert tier.lookup("a", NOW) is MISSING


def test_a_read_overlapping_a_write_of_another_key_fills(tier: L1Tier) -> None:
    generation = tier.generation
    tier.written(["b"])
    tier.fill("a", "value", None, generation)
    assert tier.lookup("a", NOW) == "value"


def test_a_read_overlapping_another_process_eviction_of_its_key_does_not_fill(
    tier: L1Tier,
) -> None:
    generation = tier.generation
    tier._on_announcement("topic", "elsewhere k b a")
    tier.fill("a", "old", None, generation)
    assert tier.lookup("a", NOW) is MISSING


@pytest.mark.parametrize("announcement", ["elsewhere p x", "elsewhere *"])
def test_a_read_overlapping_an_eviction_naming_no_key_does_not_fill(
    tier: L1Tier, announcement: str
) -> None:
    generation = tier.generation
    tier._on_announcement("topic", announcement)
    tier.fill("a", "old", None, generation)
    assert tier.lookup("a", NOW) is MISSING


def test_a_read_started_after_the_write_fills(tier: L1Tier) -> None:
    tier.written(["a"])
    tier.fill("a", "new", None, tier.generation)
    assert tier.lookup("a", NOW) == "new"


def test_forgetting_written_keys_keeps_reads_in_flight_out(tier: L1Tier) -> None:
    generation = tier.generation
    tier.written(["a"])
    tier.written([f"other:{n}" for n in range(WRITTEN_KEPT)])  # "a" is forgotten
    tier.fill("a", "old", None, generation)
    assert tier.lookup("a", NOW) is MISSING


def test_entries_filled_together_expire_spread_over_part_of_the_ttl(tier: L1Tier) -> None:
    keys = [f"k:{n}" for n in range(200)]
    for key in keys:
        tier.fill(key, "v", None, tier.generation)
    ttl = 10.0

    def alive(at: float) -> int:
        return sum(tier.entries._entries[key][0] > at for key in keys)

    assert alive(NOW + ttl * (1 - L1_TTL_SPREAD)) == len(keys)
    assert 0 < alive(NOW + ttl * (1 - L1_TTL_SPREAD / 2)) < len(keys)
    assert alive(NOW + ttl) == 0


def test_an_entry_never_outlives_its_backend_expiry(tier: L1Tier) -> None:
    tier.fill("a", "v", 1.5, tier.generation)
    assert tier.lookup("a", NOW + 1.4) == "v"
    assert tier.lookup("a", NOW + 1.5) is MISSING


def test_a_read_in_the_last_stretch_of_a_lifetime_asks_for_one_refresh(tier: L1Tier) -> None:
    tier.fill("a", "v", None, tier.generation)
    expires_at, refresh_at, _ = tier.entries._entries["a"]
    assert expires_at - refresh_at == pytest.approx((expires_at - NOW) * L1_REFRESH_AHEAD)
    assert tier.lookup("a", refresh_at - 0.01) == "v"
    assert tier.entries.due == []
    assert tier.lookup("a", refresh_at) == "v"  # still served: readers do not wait
    assert tier.lookup("a", refresh_at + 0.01) == "v"
    assert tier.entries.take_due(10) == ["a"]  # once, however many reads follow
    assert tier.entries.due == []
    assert tier.lookup("a", expires_at) is MISSING  # unrefreshed, it expires as before


def test_an_entry_cut_short_by_its_backend_expiry_is_refreshed_before_it(
    tier: L1Tier,
) -> None:
    tier.fill("a", "v", 2.0, tier.generation)
    assert tier.lookup("a", NOW + 1.49) == "v"
    assert tier.entries.due == []
    assert tier.lookup("a", NOW + 1.5) == "v"
    assert tier.entries.due == ["a"]
