"""The client address comes from X-Forwarded-For only when a trusted proxy sent it."""

from .conftest import running_client


async def test_spoofed_forwarded_for_from_untrusted_peer_does_not_change_the_key(make_settings):
    async with running_client(make_settings(), client_ip="203.0.113.10") as client:
        statuses = [
            (await client.get("/v1/items", headers={"X-Forwarded-For": f"192.0.2.{n}"})).status_code
            for n in range(8)
        ]
    assert statuses == [200] * 5 + [429] * 3


async def test_trusted_proxy_forwards_the_real_client_address(make_settings):
    settings = make_settings(trusted_proxies="10.0.0.0/8")
    async with running_client(settings, client_ip="10.0.0.2") as proxy:

        async def get_as(chain: str) -> int:
            return (await proxy.get("/v1/items", headers={"X-Forwarded-For": chain})).status_code

        first_client = [await get_as("198.51.100.1") for _ in range(6)]
        # A client cannot escape its budget by prepending a forged address: the proxy appends
        # the real one, and the rightmost untrusted address is the client.
        forged = await get_as("192.0.2.99, 198.51.100.1")
        second_client = await get_as("198.51.100.2")
    assert first_client == [200] * 5 + [429]
    assert forged == 429
    assert second_client == 200
