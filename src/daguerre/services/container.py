"""Builds the services from the settings: the composition root shared by the server and the CLI."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from daguerre.db.database import make_engine, migrate, session_factory
from daguerre.engine.client import EngineClient
from daguerre.services.accounts import AccountService
from daguerre.services.catalog import CatalogService
from daguerre.services.inference import InferenceService
from daguerre.services.jobs import JobService
from daguerre.services.records import InferenceStore
from daguerre.services.remote_images import RemoteImages
from daguerre.services.storage import Storage
from daguerre.services.upscale import UpscaleService
from daguerre.services.video import VideoService
from daguerre.services.webhooks import WebhookService
from daguerre.settings import Settings


@dataclass
class Database:
    engine: Engine
    accounts: AccountService
    catalog: CatalogService
    inferences: InferenceStore
    sessions: sessionmaker[Session]


def open_database(settings: Settings) -> Database:
    url = settings.resolved_database_url
    migrate(url)
    engine = make_engine(url)
    sessions = session_factory(engine)
    inferences = InferenceStore(sessions, settings.gateway_id, settings.gateway.lease_s)
    return Database(engine, AccountService(sessions), CatalogService(sessions), inferences, sessions)


@dataclass
class Services:
    settings: Settings
    accounts: AccountService
    catalog: CatalogService
    storage: Storage
    engine: EngineClient
    inference: InferenceService
    upscale: UpscaleService
    video: VideoService
    jobs: JobService
    webhooks: WebhookService


def build_services(settings: Settings, database: Database, engine: EngineClient) -> Services:
    storage = Storage(settings.resolved_storage_url, settings.fsspec_options(settings.resolved_storage_url))
    shared = (settings, database.accounts, database.catalog, database.inferences, storage)
    inference = InferenceService(*shared)
    upscale = UpscaleService(*shared)
    video = VideoService(*shared, images=RemoteImages(settings.remote_images, storage))
    webhooks = WebhookService(settings.webhooks, database.sessions)
    jobs = JobService(settings, database.accounts, database.inferences, storage, engine, webhooks)
    jobs.planners.update({"image": inference, "upscale": upscale, "video": video})
    return Services(
        settings, database.accounts, database.catalog, storage, engine, inference, upscale, video, jobs, webhooks
    )
