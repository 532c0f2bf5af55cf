"""What the serving modules (inference, upscale, video) share: the services they use and the one
job lifecycle every paid request goes through."""

from __future__ import annotations

from daguerre.engine.client import EngineClient
from daguerre.services.accounts import AccountService
from daguerre.services.catalog import CatalogService
from daguerre.services.lifecycle import JobLifecycle
from daguerre.services.records import InferenceStore
from daguerre.services.storage import Storage
from daguerre.settings import Settings


class ServingModule:
    def __init__(
        self,
        settings: Settings,
        accounts: AccountService,
        catalog: CatalogService,
        inferences: InferenceStore,
        storage: Storage,
        engine: EngineClient,
    ) -> None:
        self.settings = settings
        self.accounts = accounts
        self.catalog = catalog
        self.inferences = inferences
        self.storage = storage
        self.engine = engine
        self.lifecycle = JobLifecycle(inferences, storage)
