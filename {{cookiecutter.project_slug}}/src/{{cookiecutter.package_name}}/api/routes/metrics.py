"""/metrics for the Prometheus scraper: exempt from limits; nginx does not serve it publicly."""

import os

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from ...observability import METRICS_PATH
from ...ratelimit import limiter

router = APIRouter()


def registry() -> CollectorRegistry:
    """This process's metrics; with several workers (PROMETHEUS_MULTIPROC_DIR set, as
    prometheus-client's multiprocess mode asks), every worker's, added up."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY
    combined = CollectorRegistry()
    MultiProcessCollector(combined)  # type: ignore[no-untyped-call]  # unannotated upstream
    return combined


@router.get(METRICS_PATH, include_in_schema=False)
@limiter.exempt
async def metrics() -> Response:
    return Response(generate_latest(registry()), media_type=CONTENT_TYPE_LATEST)
