"""The FastAPI application."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from uvicorn.config import LOGGING_CONFIG

from daguerre import __version__, metrics
from daguerre.api.envelope import install_error_handlers
from daguerre.api.redaction import install_redaction
from daguerre.api.routes import files, health, inference, jobs, models, upscale, video
from daguerre.api.routes import metrics as metrics_route
from daguerre.api.routes.docs import install_docs
from daguerre.engine.client import EngineClient
from daguerre.services.container import build_services, open_database
from daguerre.settings import Settings

log = logging.getLogger(__name__)


def default_engine(settings: Settings) -> EngineClient:
    from daguerre.engine.runtime.local import (
        LocalEngine,  # torch is imported only when an engine is built
    )

    return LocalEngine(
        cache_dir=settings.cache_dir,
        device=settings.device,
        dtype=settings.dtype,
        max_loaded_models=settings.max_loaded_models,
        max_queue=settings.max_queue,
        shutdown_grace_s=settings.shutdown_grace_s,
        max_prompt_chunks=settings.max_prompt_chunks,
        video_cpu_offload=settings.video.cpu_offload,
        video_vae_tiling=settings.video.vae_tiling,
        model_cache_bytes=settings.model_cache.max_bytes,
        auxiliary_cache_bytes=settings.model_cache.auxiliary_max_bytes,
        max_loras=settings.model_cache.max_loras,
        max_lora_bytes=settings.model_cache.max_lora_bytes,
        max_batch_size=settings.engine.max_batch_size,
        batch_window_s=settings.engine.batch_window_ms / 1000,
        cpu_threads=settings.engine.cpu_threads,
    )


def create_app(settings: Settings | None = None, engine: EngineClient | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        database = open_database(settings)
        services = build_services(settings, database, engine or default_engine(settings))
        app.state.services = services
        await services.engine.start()
        await services.webhooks.start()
        # Jobs the last server left unfinished run now, in their order, before anything new (see
        # InferenceStore.recover; one server owns its database).
        resumed = await services.jobs.recover()
        if resumed:
            log.warning("resumed %d job(s) left unfinished by the last shutdown: %s", len(resumed), resumed)
        try:
            yield
        finally:
            await services.jobs.close()
            await services.webhooks.close()
            database.engine.dispose()

    app = FastAPI(
        title="daguerre",
        version=__version__,
        summary="Self-hosted image and video generation that speaks the SinkIn API",
        lifespan=lifespan,
        # Served by install_docs from the package's own copies of the assets, not a CDN.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    install_error_handlers(app)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["*"],
    )
    if settings.metrics.enabled:
        app.add_middleware(metrics_route.RequestMetrics)  # last added, outermost: sees every final status
        app.include_router(metrics_route.router)
    install_redaction()
    for module in (inference, models, upscale, video, jobs, files, health):
        app.include_router(module.router)
    install_docs(app)
    return app


class GracefulServer(uvicorn.Server):
    """uvicorn, closing the jobs the moment shutdown begins (SIGTERM, Ctrl+C).

    uvicorn stops accepting, then waits for in-flight requests before the app's lifespan shutdown;
    requests queued behind a running job would run to the end in that wait. Closing the jobs first
    fails the waiting requests' jobs at once (their credits go back; jobs nobody waits for stay
    queued for the next start), and fails the running job too if it is not done within
    `shutdown_grace_s`, so every request ends, refunded or delivered, before exit.
    """

    def __init__(self, app: FastAPI, settings: Settings) -> None:
        super().__init__(
            uvicorn.Config(
                app,
                host=settings.host,
                port=settings.port,
                proxy_headers=True,
                # Past the engine's own deadline, so requests end through it (refunded) rather
                # than by uvicorn cancelling them.
                timeout_graceful_shutdown=int(settings.shutdown_grace_s) + 5,
                log_config=metrics.json_log_config() if settings.log_format == "json" else LOGGING_CONFIG,
            )
        )
        self._app = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        services = getattr(self._app.state, "services", None)
        closing = asyncio.create_task(services.jobs.close()) if services is not None else None
        await super().shutdown(sockets)
        if closing is not None:
            await closing
