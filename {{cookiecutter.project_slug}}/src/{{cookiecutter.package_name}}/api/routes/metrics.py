"""/metrics for the Prometheus scraper: exempt from limits; nginx does not serve it publicly."""

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ...observability import METRICS_PATH
from ...ratelimit import limiter

router = APIRouter()


@router.get(METRICS_PATH, include_in_schema=False)
@limiter.exempt
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
