"""What the serving modules (inference, upscale, video) share: the services they plan with.

Each module plans a request (`plan`: validate, resolve defaults, price; no side effects), builds
the synchronous answer from a finished record (`answer`), and rebuilds a job from its record after
a restart (`restore`); services/jobs.py runs every job the one way.
"""

from __future__ import annotations

from daguerre.services.accounts import AccountService
from daguerre.services.catalog import CatalogService
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
    ) -> None:
        self.settings = settings
        self.accounts = accounts
        self.catalog = catalog
        self.inferences = inferences
        self.storage = storage
