"""Without REDIS_URL and DATABASE_URL the service still starts with one command."""

import httpx


def test_without_redis_or_database_the_service_runs_on_embedded_defaults(start_uvicorn, tmp_path):
    base_url = start_uvicorn(REDIS_URL="", DATABASE_URL="")
    responses = [httpx.get(f"{base_url}/v1/items") for _ in range(3)]
    ready = httpx.get(f"{base_url}/health/ready")

    assert [r.status_code for r in responses] == [200] * 3
    assert responses[0].headers["ratelimit-policy"].startswith('"anonymous')  # the seeded plan
    remaining = [int(r.headers["x-ratelimit-remaining"]) for r in responses]
    assert remaining[0] - remaining[2] == 2  # counted, in memory
    assert ready.json()["checks"] == {
        "redis": "not configured (in-memory limits)",
        "database": "ok",
    }
    assert list(tmp_path.glob("*.sqlite3")), "the SQLite database is created and migrated"
