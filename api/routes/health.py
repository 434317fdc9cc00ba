from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Request

from api.schemas import Health

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])

# a probe must get its answer within a second, even while the store is busy with heavy reads
PING_TIMEOUT_S = 0.5


@router.get("/healthz", response_model=Health)
async def healthz(request: Request) -> Health:
    """Always 200 while the process serves; ``store`` says whether the store answered a ping within
    half a second. Needs no token (for probes and load balancers) and says nothing else."""
    state = request.app.state
    try:
        if not state.store_open:
            await state.store.open()
            state.store_open = True
        ok = await asyncio.wait_for(state.store.ping(), PING_TIMEOUT_S)
    except Exception as e:  # any failure of the store means "unavailable" here, never a 500
        log.debug("store ping failed: %r", e)
        ok = False
    return Health(store="ok" if ok else "unavailable")
