"""Refusals remembered until they end (the Redis counter's, and the addresses refused for
failed authentications): each refused until its refusal ends, then served again, in bounded
memory. Pure: `pytest tests/unit` needs no service."""

import time

from {{ cookiecutter.package_name }}.refusals import RefusalMemory


def test_an_address_is_refused_until_its_refusal_ends_and_no_longer():
    refused: RefusalMemory[str, str] = RefusalMemory()
    assert refused.refusal("ip:203.0.113.5") is None
    refused.remember("ip:203.0.113.5", "429 auth-failures", seconds=60)
    refused.remember("ip:203.0.113.7", "429 briefly", seconds=0.05)
    refused.remember("ip:203.0.113.8", "429 already over", seconds=0)  # ended: not kept
    assert refused.refusal("ip:203.0.113.5") == "429 auth-failures"
    assert refused.refusal("ip:203.0.113.6") is None  # another address: its own count
    assert refused.refusal("ip:203.0.113.8") is None and len(refused) == 2
    time.sleep(0.1)
    assert refused.refusal("ip:203.0.113.7") is None  # its refusal ended
    assert refused.refusal("ip:203.0.113.5") == "429 auth-failures"


def test_a_flood_of_refused_addresses_keeps_memory_bounded_and_the_live_refusals():
    refused: RefusalMemory[str, str] = RefusalMemory(max_entries=100)
    for n in range(99):
        refused.remember(f"ip:198.51.100.{n}", "gone", seconds=0.01)
    time.sleep(0.05)  # those have ended
    refused.remember("ip:203.0.113.5", "live", seconds=60)
    refused.remember("ip:203.0.113.6", "live too", seconds=60)  # the 101st: the ended ones go
    assert len(refused) == 2
    assert refused.refusal("ip:203.0.113.5") == "live"
    for n in range(98):
        refused.remember(f"ip:192.0.2.{n}", "live", seconds=60)
    refused.remember("ip:203.0.113.5", "again", seconds=60)  # a full table: refreshed in place
    assert len(refused) == 100 and refused.refusal("ip:192.0.2.0") == "live"
    for n in range(200):  # that many live refusals: all forgotten, memory first
        refused.remember(f"ip:192.0.2.{n + 100}", "live", seconds=60)
    assert len(refused) <= 100
