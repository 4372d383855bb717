"""What finding a route costs with many routes: FastAPI's own route class against the service's.

    <baked project>/.venv/bin/python bench/route_matching.py [--package rate_limited_service]

Run it with the Python of a baked service (its package importable). Routing is a linear scan:
a request for the last of 200 routes tries every route before it, so the per-route cost of
`matches` is what a large API pays on every request. Timed on `route.matches` alone, as the
router calls it, for the first and the last of 200 `GET /v1/r<i>/{item_id}` routes, with
FastAPI's `APIRoute` and with the service's `RateLimitedRoute`, and for a probe routed after
those 200 routes or before them; best of 7 rounds. Not a test:
it measures. Figures go to the README's "Routing cost" table.
"""

import argparse
import importlib
import time
import timeit

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from starlette.routing import Match

ROUTES = 200


def app_with(route_class: type[APIRoute], probe_first: bool = False) -> FastAPI:
    app = FastAPI()
    probes = APIRouter(route_class=route_class)

    @probes.get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "ok"}

    if probe_first:
        app.include_router(probes)
    router = APIRouter(route_class=route_class)
    for i in range(ROUTES):

        async def endpoint(item_id: int) -> dict[str, int]:
            return {"id": item_id}

        router.add_api_route(f"/v1/r{i}/{{item_id}}", endpoint, methods=["GET"])
    app.include_router(router)
    if not probe_first:
        app.include_router(probes)
    return app


def lookup_microseconds(app: FastAPI, path: str) -> float:
    # The app's top-level routes, as its router tries them (FastAPI's documentation pages,
    # then the included routers, each trying its own routes in turn).
    routes = app.router.routes
    scope = {"type": "http", "method": "GET", "path": path, "root_path": "", "headers": []}

    def find() -> None:
        for route in routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return
        raise AssertionError(f"no route for {path}")

    number = 500
    # CPU time of this process: on a shared machine, waiting for a core is not routing.
    took = timeit.repeat(find, number=number, repeat=3, timer=time.process_time)
    return min(took) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--package", default="rate_limited_service")
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    route_class = importlib.import_module(f"{args.package}.ratelimit").RateLimitedRoute
    overrides = route_class.matches is not APIRoute.matches
    apps = {
        "APIRoute": app_with(APIRoute),
        "RateLimitedRoute": app_with(route_class),
        "probe after the API": app_with(route_class),
        "probe first": app_with(route_class, probe_first=True),
    }
    paths = {"first": "/v1/r0/7", "last": f"/v1/r{ROUTES - 1}/7", "probe": "/health/live"}
    # Rounds interleaved, the best of each kept: a busy machine slows some rounds, not the code.
    best: dict[tuple[str, str], float] = {}
    for _ in range(args.rounds):
        for name, app in apps.items():
            for which, path in paths.items():
                if name.startswith("probe") != (which == "probe"):
                    continue
                took = lookup_microseconds(app, path)
                best[name, which] = min(best.get((name, which), took), took)
    print(f"RateLimitedRoute overrides matches: {overrides}")
    print(f"{'route class':<20}{'first (µs)':>12}{'last of 200 (µs)':>18}{'per route (µs)':>16}")
    for name in ("APIRoute", "RateLimitedRoute"):
        first, last = best[name, "first"], best[name, "last"]
        per_route = (last - first) / (ROUTES - 1)
        print(f"{name:<20}{first:>12.2f}{last:>18.1f}{per_route:>16.3f}")
    for name in ("probe after the API", "probe first"):
        print(f"/health/live, {name}: {best[name, 'probe']:.1f} µs")


if __name__ == "__main__":
    main()
