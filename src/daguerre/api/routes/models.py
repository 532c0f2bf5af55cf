from __future__ import annotations

from anyio import to_thread
from fastapi import APIRouter, Request

from daguerre.api.dependencies import read_request, services
from daguerre.api.openapi import ERROR_RESPONSES, form_body
from daguerre.protocol.models import ModelEntry, ModelsRequest, ModelsResponse
from daguerre.services.catalog import Kind, ModelRecord
from daguerre.services.inference import model_sizes

router = APIRouter()


def entry(model: ModelRecord) -> ModelEntry:
    return ModelEntry(
        id=model.id,
        title=model.title,
        name=model.title,
        cover_img=model.cover_img,
        link=model.link,
        tags=model.tags,
        type=model.kind.value,
        base_model=model.family,
        versions=[v.version for v in model.versions],
        civitai_model_id=model.civitai_model_id,
    )


@router.post(
    "/api/models",
    response_model=ModelsResponse,
    response_model_exclude_none=True,
    responses=ERROR_RESPONSES,
    openapi_extra=form_body(ModelsRequest),
    summary="List the installed image models, LoRAs and video models",
)
async def models(request: Request) -> ModelsResponse:
    await read_request(request)
    catalog = services(request).catalog
    checkpoints = await to_thread.run_sync(catalog.list, Kind.CHECKPOINT)
    loras = await to_thread.run_sync(catalog.list, Kind.LORA)
    videos = await to_thread.run_sync(services(request).video.listing)
    video_models = [ModelEntry(**{**entry(m).model_dump(), **extra}) for m, extra in videos]
    # `sizes` (an addition): the range and default size of each image model, by its family.
    images = [ModelEntry(**{**entry(m).model_dump(), "sizes": model_sizes(m)}) for m in checkpoints]
    embeddings = await to_thread.run_sync(catalog.list, Kind.EMBEDDING)
    return ModelsResponse(
        models=images,
        loras=[entry(m) for m in loras],
        video_models=video_models,
        # `vectors`: the tokens an embedding takes of a prompt's 75-token chunks.
        embeddings=[
            ModelEntry(**{**entry(m).model_dump(), "vectors": m.options.get("vectors", 1)}) for m in embeddings
        ],
    )
