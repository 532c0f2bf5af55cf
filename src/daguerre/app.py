"""The FastAPI application."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from uvicorn.config import LOGGING_CONFIG

from daguerre import __version__, metrics
from daguerre.api.envelope import install_error_handlers
from daguerre.api.openapi import install_setting_limits
from daguerre.api.redaction import install_redaction
from daguerre.api.routes import account, files, health, inference, jobs, models, upscale, video
from daguerre.api.routes import metrics as metrics_route
from daguerre.api.routes.docs import install_docs
from daguerre.api.routes.playground import install_playground
from daguerre.engine.client import EngineClient
from daguerre.services.container import build_services, open_database
from daguerre.settings import Settings

log = logging.getLogger(__name__)


def engine_options(settings: Settings) -> dict[str, Any]:
    """LocalEngine's keyword arguments from the settings: this process's engine, or each Ray
    replica's (which caps max_loaded_models at ray.max_models_per_replica); all picklable."""
    # torch is imported only when an engine is built.
    from daguerre.engine.loading.model_files import ModelFiles
    from daguerre.engine.options import ExecutionOptions

    execution = settings.execution
    return {
        "cache_dir": settings.cache_dir,
        "device": settings.device,
        "dtype": settings.dtype,
        "max_loaded_models": settings.max_loaded_models,
        "shutdown_grace_s": settings.shutdown_grace_s,
        "max_prompt_chunks": settings.max_prompt_chunks,
        "video_cpu_offload": settings.video.cpu_offload,
        "video_vae_tiling": settings.video.vae_tiling,
        "model_cache_bytes": settings.model_cache.max_bytes,
        "auxiliary_cache_bytes": settings.model_cache.auxiliary_max_bytes,
        "max_loras": settings.model_cache.max_loras,
        "max_lora_bytes": settings.model_cache.max_lora_bytes,
        "model_files": ModelFiles(settings.model_files_dir, settings.model_files.max_bytes, settings.fsspec_options),
        "host_cache_bytes": settings.model_cache.host_max_bytes,
        "max_batch_size": settings.worker.max_batch_size,
        "batch_window_s": settings.worker.batch_window_ms / 1000,
        "cpu_threads": settings.worker.cpu_threads,
        "execution": ExecutionOptions(
            channels_last=execution.channels_last,
            attention=execution.attention,
            fuse_qkv=execution.fuse_qkv,
            compile=execution.compile,
            compile_mode=execution.compile_mode,
            compile_max_shapes=execution.compile_max_shapes,
            compile_cache_dir=execution.compile_cache_dir or settings.cache_dir / "inductor",
        ),
    }


def default_engine(settings: Settings) -> EngineClient:
    if settings.engine == "ray":
        from daguerre.engine.ray.client import RayEngineClient  # Ray is imported only for a fleet

        return RayEngineClient(settings.ray, engine_options(settings), settings.max_queue, settings.shutdown_grace_s)
    from daguerre.engine.runtime.local import (
        LocalEngine,  # torch is imported only when an engine is built
    )

    return LocalEngine(max_queue=settings.max_queue, **engine_options(settings))


def fleet_application(args: dict[str, str]) -> Any:
    """The workers' Ray Serve application from the settings (DAGUERRE_* in the environment): an
    application builder, the import path a KubeRay RayService or `serve deploy` names
    (`daguerre.app:fleet_application`; see deploy/kuberay/rayservice.yaml). `args` is unused: the
    settings are the configuration."""
    from daguerre.engine.ray.client import application

    settings = Settings()
    return application(settings.ray, engine_options(settings))


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
        # InferenceStore.recover), and the heartbeat starts keeping this gateway's claims.
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
    for module in (inference, models, upscale, video, jobs, account, files, health):
        app.include_router(module.router)
    install_docs(app)
    install_playground(app)
    install_setting_limits(app, settings.max_num_images)
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
