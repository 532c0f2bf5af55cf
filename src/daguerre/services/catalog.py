"""The catalog of installed models: image checkpoints, and (as later issues add them) LoRAs,
ControlNets, annotators, upscalers and video models. Each model has one or more versions, each a
local file or folder; the newest registered version is the latest.
"""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from daguerre.db.tables import CatalogModel, ModelVersion
from daguerre.errors import DaguerreError, NotFound

_ID_ALPHABET = string.ascii_letters + string.digits


class Kind(StrEnum):
    CHECKPOINT = "checkpoint"
    UPSCALER = "upscaler"  # a super-resolution model spandrel loads; options["scale"] is its native factor
    LORA = "lora"  # options: layout (kohya | diffusers), lcm (true for an LCM-LoRA)
    CONTROLNET = "controlnet"  # options: controlnet (canny | depth | openpose)
    ANNOTATOR = "annotator"  # options: annotator (depth | openpose)
    VIDEO = "video"
    EMBEDDING = "embedding"  # a textual inversion; options: vectors (its token count). The id is what prompts write
    VAE = "vae"  # an AutoencoderKL a checkpoint may use instead of its own (options["vae"]: its id)


class Format(StrEnum):
    DIFFUSERS = "diffusers"
    SINGLE_FILE = "single_file"


@dataclass(frozen=True)
class Version:
    version: str
    path: str
    format: Format
    config_path: str | None
    sha256: str | None = None  # of a file registered by URL


@dataclass(frozen=True)
class ModelRecord:
    id: str
    kind: Kind
    title: str
    family: str
    cover_img: str
    link: str
    tags: list[str]
    civitai_model_id: int | None
    default_scale: float | None
    default_scheduler: str | None
    default_negative_prompt: str | None
    options: dict[str, Any]
    versions: list[Version] = field(default_factory=list)  # oldest first

    @property
    def latest(self) -> Version:
        return self.versions[-1]

    def version(self, name: str | None) -> Version:
        if not name:
            return self.latest
        for v in self.versions:
            if v.version == name:
                return v
        known = ", ".join(v.version for v in self.versions)
        raise NotFound(f"model {self.id} has no version {name!r}; known versions: {known}")


@dataclass(frozen=True)
class NewModel:
    path: Path
    format: Format
    title: str
    kind: Kind = Kind.CHECKPOINT
    id: str | None = None
    version: str | None = None
    family: str = "sd15"
    config_path: Path | None = None
    # Registered by URL (s3://...): the catalog keeps the URL and the file's checksum, and `path` is
    # only the copy `models add` probed; every node fetches its own (engine/loading/model_files.py).
    url: str | None = None
    sha256: str | None = None
    # Metadata: None keeps what an existing id already has (adding a version changes only what
    # the operator gives).
    cover_img: str | None = None
    link: str | None = None
    tags: list[str] | None = None
    civitai_model_id: int | None = None
    default_scale: float | None = None
    default_scheduler: str | None = None
    default_negative_prompt: str | None = None
    options: dict[str, Any] | None = None


_METADATA = (
    "cover_img",
    "link",
    "tags",
    "civitai_model_id",
    "default_scale",
    "default_scheduler",
    "default_negative_prompt",
    "options",
)


class CatalogService:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def add(self, new: NewModel) -> ModelRecord:
        """Register a model, or a new version of an existing id (which becomes the latest)."""
        with self._sessions.begin() as session:
            model = session.get(CatalogModel, new.id) if new.id else None
            if model is None:
                model = CatalogModel(
                    id=new.id or self._new_id(session), kind=new.kind.value, cover_img="", link="", tags=[], options={}
                )
                session.add(model)
            elif model.kind != new.kind.value:
                raise DaguerreError(f"id {model.id} is already a {model.kind}, not a {new.kind.value}")
            model.title = new.title
            model.family = new.family
            for name in _METADATA:
                value = getattr(new, name)
                if value is not None:
                    setattr(model, name, value)
            session.flush()
            taken = set(session.scalars(select(ModelVersion.version).where(ModelVersion.model_id == model.id)))
            version = new.version or str(len(taken) + 1)
            if version in taken:
                raise DaguerreError(f"model {model.id} already has a version {version!r}")
            session.add(
                ModelVersion(
                    model_id=model.id,
                    version=version,
                    path=new.url or str(new.path.resolve()),
                    format=new.format.value,
                    config_path=str(new.config_path.resolve()) if new.config_path else None,
                    sha256=new.sha256,
                )
            )
            session.flush()
            return self._record(session, model)

    def get(self, model_id: str, kind: Kind | None = None) -> ModelRecord:
        with self._sessions() as session:
            model = session.get(CatalogModel, model_id)
            if model is None or (kind is not None and model.kind != kind.value):
                what = f"{kind.value} " if kind else ""
                raise NotFound(f"{what}model {model_id!r} not found; /api/models lists the installed ones")
            return self._record(session, model)

    def list(self, kind: Kind | None = None) -> list[ModelRecord]:
        with self._sessions() as session:
            query = select(CatalogModel).order_by(CatalogModel.created_at, CatalogModel.id)
            if kind is not None:
                query = query.where(CatalogModel.kind == kind.value)
            return [self._record(session, m) for m in session.scalars(query)]

    def remove(self, model_id: str) -> None:
        with self._sessions.begin() as session:
            if session.get(CatalogModel, model_id) is None:
                raise NotFound(f"model {model_id!r} not found")
            session.execute(delete(ModelVersion).where(ModelVersion.model_id == model_id))
            session.execute(delete(CatalogModel).where(CatalogModel.id == model_id))

    @staticmethod
    def _new_id(session: Session) -> str:
        # Seven letters and digits, like the hosted service's ids (e.g. vlDnKP6).
        while True:
            candidate = "".join(secrets.choice(_ID_ALPHABET) for _ in range(7))
            if not session.scalar(select(func.count()).where(CatalogModel.id == candidate)):
                return candidate

    @staticmethod
    def _record(session: Session, model: CatalogModel) -> ModelRecord:
        versions = session.scalars(
            select(ModelVersion).where(ModelVersion.model_id == model.id).order_by(ModelVersion.id)
        )
        return ModelRecord(
            id=model.id,
            kind=Kind(model.kind),
            title=model.title,
            family=model.family,
            cover_img=model.cover_img,
            link=model.link,
            tags=list(model.tags),
            civitai_model_id=model.civitai_model_id,
            default_scale=model.default_scale,
            default_scheduler=model.default_scheduler,
            default_negative_prompt=model.default_negative_prompt,
            options=dict(model.options),
            versions=[Version(v.version, v.path, Format(v.format), v.config_path, v.sha256) for v in versions],
        )
