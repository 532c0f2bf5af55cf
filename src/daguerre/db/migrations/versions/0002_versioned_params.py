"""inference params become a versioned document

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 04:30:00

Records written before this stored the engine's job dataclass (`asdict(job)`), so a renamed or
added job field broke hires fix for them. They become {"schema": 2, "request": ..., "resolved":
...} (services/records.py). The conversion is written out here, not imported from the services,
so that it keeps describing this step however the code changes later. Rows are read and written
in batches through Python, which works the same on SQLite and Postgres JSON columns.
"""

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_BATCH = 500
_LCM = "LCM"
_INFERENCES = sa.table(
    "inferences",
    sa.column("id", sa.String),
    sa.column("kind", sa.String),
    sa.column("model_id", sa.String),
    sa.column("version", sa.String),
    sa.column("params", sa.JSON),
)


def _pair(spec: dict[str, Any] | None) -> dict[str, Any] | None:
    return {"id": spec["id"], "version": spec.get("version")} if spec else None


def _image(old: dict[str, Any], model_id: str, version: str) -> dict[str, Any]:
    seeds = [int(seed) for seed in old.get("seeds", [])]
    lcm = old.get("scheduler") == _LCM
    controlnet = old.get("controlnet")
    # The request as far as the old record tells: its negative prompt already had the default
    # appended, and its LoRAs are pinned in "resolved", so neither is applied a second time.
    request = {
        "model_id": model_id,
        "prompt": old["prompt"],
        "version": version,
        "width": old["width"],
        "height": old["height"],
        "negative_prompt": old.get("negative_prompt", ""),
        "use_default_neg": False,
        "steps": old["steps"],
        "scale": old["guidance_scale"],
        "num_images": len(seeds),
        "seed": seeds[0] if seeds else -1,
        "scheduler": None if lcm else old["scheduler"],
        "lora": None,
        "lora_scale": "0.75",
        "lcm": lcm,
        "image_strength": old.get("strength", 0.75),
        "controlnet": controlnet["kind"] if controlnet else None,
        "controlnet_preprocess": old.get("preprocess", True),
    }
    resolved: dict[str, Any] = {
        "seeds": seeds,
        "width": old["width"],
        "height": old["height"],
        "steps": old["steps"],
        "scale": old["guidance_scale"],
        "scheduler": old["scheduler"],
        "negative_prompt": old.get("negative_prompt", ""),
        "loras": [
            {"id": lora["id"], "version": lora["version"], "weight": lora["weight"]} for lora in old.get("loras", [])
        ],
    }
    if controlnet:
        resolved["controlnet"] = _pair(controlnet)
        resolved["annotator"] = _pair(old.get("annotator"))
    return {"schema": 2, "request": request, "resolved": resolved}


def _upscale(old: dict[str, Any]) -> dict[str, Any]:
    kind = old.get("type", "esrgan")
    request = {
        "inf_id": old.get("source_inf_id", ""),
        "url": f"/files/{old.get('source', '')}",  # the old record kept the key, not the URL it came as
        "type": kind,
        "scale": old.get("scale", 2),
        "strength": old.get("strength", 0.6),
    }
    resolved: dict[str, Any] = {"source": old.get("source", ""), "width": old["width"], "height": old["height"]}
    if kind == "hires_fix":
        resolved["seed"] = old.get("seed")
        upscaler = old.get("upscaler")
        resolved["upscaler"] = {"id": upscaler, "version": None} if upscaler else None
    return {"schema": 2, "request": request, "resolved": resolved}


def _video(old: dict[str, Any], model_id: str, version: str) -> dict[str, Any]:
    request = {
        "model_id": model_id,
        "prompt": old["prompt"],
        "image_url": old.get("image_url"),
        "resolution": old.get("resolution", "480p"),
        "fps": old["fps"],
        "num_frames": old["num_frames"],
        "version": version,
        "negative_prompt": old.get("negative_prompt", ""),
        "steps": old["steps"],
        "scale": old["guidance_scale"],
        "seed": old["seed"],
    }
    resolved = {
        "architecture": old.get("architecture"),
        "width": old["width"],
        "height": old["height"],
        "num_frames": old["num_frames"],
        "steps": old["steps"],
        "scale": old["guidance_scale"],
        "seed": old["seed"],
        "motion_adapter": old.get("motion_adapter"),
    }
    return {"schema": 2, "request": request, "resolved": resolved}


def convert(kind: str, model_id: str, version: str, old: dict[str, Any]) -> dict[str, Any] | None:
    """The schema-2 document for an old record's params; None when there is nothing to convert
    (already converted, or a record that failed before its parameters were known)."""
    if not old or "schema" in old:
        return None
    converters = {
        "image": lambda: _image(old, model_id, version),
        "upscale": lambda: _upscale(old),
        "video": lambda: _video(old, model_id, version),
    }
    if kind not in converters:
        return None
    try:
        return converters[kind]()
    except (KeyError, TypeError, ValueError):
        # Kept, not dropped: the record stays readable, and re-rendering it says it cannot be.
        return {"schema": 2, "request": {}, "resolved": {}, "legacy": old}


def upgrade() -> None:
    connection = op.get_bind()
    last = ""
    while True:
        rows = connection.execute(
            sa.select(_INFERENCES).where(_INFERENCES.c.id > last).order_by(_INFERENCES.c.id).limit(_BATCH)
        ).all()
        if not rows:
            return
        for row in rows:
            document = convert(row.kind, row.model_id, row.version, row.params)
            if document is not None:
                connection.execute(
                    sa.update(_INFERENCES).where(_INFERENCES.c.id == row.id).values(params=document)
                )
        last = rows[-1].id


def downgrade() -> None:
    # The old shape held engine fields (LoRA paths among them) that the new document leaves to the
    # catalog; going back would invent them.
    raise NotImplementedError("inference records cannot go back to the pre-0002 shape; restore a backup instead")
