"""POST /api/models."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from daguerre.protocol.fields import Text


class ModelsRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    access_token: Text


class ModelEntry(BaseModel):
    # Clients of the hosted API validate these strictly (cover_img and link must be strings, not
    # null; civitai_model_id a number or absent), so empty values are "" and unknown ids omitted.
    model_config = ConfigDict(extra="allow")

    id: str
    title: str
    name: str = Field(description="Display name (the hosted API's field; same as title)")
    cover_img: str
    link: str
    tags: list[str]
    type: str = Field(description="checkpoint, lora, video, ...")
    base_model: str = Field(description="Model family, e.g. sd15")
    versions: list[str]
    civitai_model_id: int | None = None


class ModelsResponse(BaseModel):
    error_code: Literal[0] = 0
    models: list[ModelEntry]
    loras: list[ModelEntry]
    video_models: list[ModelEntry]
    embeddings: list[ModelEntry] = Field(
        default_factory=list, description="Textual-inversion embeddings a prompt may name by id (an addition)"
    )
