"""The FastAPI application."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from daguerre import __version__
from daguerre.api.envelope import install_error_handlers
from daguerre.api.redaction import install_redaction
from daguerre.api.routes import files, health, inference, models, upscale, video
from daguerre.engine.client import EngineClient
from daguerre.services.container import build_services, open_database
from daguerre.settings import Settings


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
        video_cpu_offload=settings.video.cpu_offload,
        video_vae_tiling=settings.video.vae_tiling,
    )


def create_app(settings: Settings | None = None, engine: EngineClient | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        database = open_database(settings)
        services = build_services(settings, database, engine or default_engine(settings))
        app.state.services = services
        await services.engine.start()
        try:
            yield
        finally:
            await services.engine.close()
            database.engine.dispose()

    app = FastAPI(
        title="daguerre",
        version=__version__,
        summary="Self-hosted image and video generation that speaks the SinkIn API",
        lifespan=lifespan,
    )
    app.state.settings = settings
    install_error_handlers(app)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["*"],
    )
    install_redaction()
    for module in (inference, models, upscale, video, files, health):
        app.include_router(module.router)
    return app
