"""What a request adds to its base model: LoRAs (with A1111 prompt tags), the LCM-LoRA, and the
ControlNet with its annotator, looked up in the catalog and checked against the model's family.

LoRA syntax (beyond the hosted API, which takes one id):
- `lora=id1,id2` with `lora_scale=0.6` (one scale for all) or `lora_scale=0.6,0.9` (one per id);
  `lora_scale` defaults to 0.75, each from -2 to 2.
- `<lora:id:weight>` tags in the prompt, as in A1111 (weight default 1, A1111's default); the
  tags are removed from the prompt. A tag for an id also given in `lora` sets its weight.
"""

from __future__ import annotations

import re

from daguerre.engine.jobs import AuxiliarySpec, LoraSpec
from daguerre.errors import DaguerreError, InvalidParameter
from daguerre.protocol.inference import LORA_SCALE_RANGE, InferenceRequest
from daguerre.services.catalog import CatalogService, Kind, ModelRecord

TAG_WEIGHT = 1.0
_TAG = re.compile(r"<lora:([^:>]+)(?::([^>]*))?>", re.IGNORECASE)
_LOW, _HIGH = LORA_SCALE_RANGE
_SCALE_RULE = f"must be a number from {_LOW:g} to {_HIGH:g}, or one per LoRA separated by commas"


def _weight(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if _LOW <= value <= _HIGH else None


def requested_loras(request: InferenceRequest) -> tuple[str, dict[str, float]]:
    """The prompt without its <lora:...> tags, and the LoRA ids asked for with their weights."""
    ids = [part.strip() for part in (request.lora or "").split(",") if part.strip()]
    if len(set(ids)) != len(ids):
        raise InvalidParameter.bad_value("lora", request.lora, "each LoRA id may appear once")
    texts = [part.strip() for part in request.lora_scale.split(",")]
    parsed = [_weight(text) for text in texts]
    scales = [scale for scale in parsed if scale is not None]
    if len(scales) != len(parsed) or len(scales) not in (1, len(ids) or 1):
        raise InvalidParameter.bad_value("lora_scale", request.lora_scale, _SCALE_RULE)
    weights = dict(zip(ids, scales * len(ids) if len(scales) == 1 else scales, strict=True))
    for match in _TAG.finditer(request.prompt):
        weight = _weight(match.group(2)) if match.group(2) else TAG_WEIGHT
        if weight is None:
            raise InvalidParameter.bad_value(
                "prompt", match.group(0), f"a <lora:id:weight> weight must be a number from {_LOW:g} to {_HIGH:g}"
            )
        weights[match.group(1).strip()] = weight
    return _TAG.sub("", request.prompt).strip(), weights


def lora_specs(catalog: CatalogService, model: ModelRecord, weights: dict[str, float]) -> tuple[LoraSpec, ...]:
    specs = []
    for lora_id, weight in weights.items():
        lora = catalog.get(lora_id, Kind.LORA)
        if lora.family != model.family:
            raise InvalidParameter.bad_value(
                "lora", lora_id, f"that LoRA is for the {lora.family} family; model {model.id} is {model.family}"
            )
        specs.append(LoraSpec(lora.id, lora.latest.version, lora.latest.path, weight, lora.latest.sha256))
    return tuple(specs)


def lcm_lora(catalog: CatalogService, model: ModelRecord) -> LoraSpec:
    candidates = [m for m in catalog.list(Kind.LORA) if m.options.get("lcm") and m.family == model.family]
    if not candidates:
        raise DaguerreError(
            f"lcm=true needs an LCM-LoRA for the {model.family} family of model {model.id}, and none is installed "
            "(the operator registers one with `daguerre models add PATH --kind lora --lcm`)"
        )
    lora = candidates[-1]
    return LoraSpec(lora.id, lora.latest.version, lora.latest.path, 1.0, lora.latest.sha256)


def _auxiliary(record: ModelRecord, kind: str) -> AuxiliarySpec:
    return AuxiliarySpec(record.id, record.latest.version, record.latest.path, kind)


def controlnet_specs(
    catalog: CatalogService, model: ModelRecord, name: str, preprocess: bool
) -> tuple[AuxiliarySpec, AuxiliarySpec | None]:
    """The newest ControlNet of that type for the model's family, and the annotator it needs."""
    installed = [m for m in catalog.list(Kind.CONTROLNET) if m.options.get("controlnet") == name]
    fitting = [m for m in installed if m.family == model.family]
    if not fitting:
        if installed:
            families = ", ".join(sorted({m.family for m in installed}))
            raise InvalidParameter.bad_value(
                "controlnet",
                name,
                f"the {name} ControlNet is installed only for the {families} family; model {model.id} is "
                f"{model.family}",
            )
        raise InvalidParameter.bad_value(
            "controlnet",
            name,
            f"no {name} ControlNet is installed for the {model.family} family (the operator registers one with "
            f"`daguerre models add PATH --kind controlnet --controlnet {name}`)",
        )
    controlnet = _auxiliary(fitting[-1], name)
    if name == "canny" or not preprocess:
        return controlnet, None
    annotators = [m for m in catalog.list(Kind.ANNOTATOR) if m.options.get("annotator") == name]
    if not annotators:
        raise InvalidParameter.bad_value(
            "controlnet",
            name,
            f"no {name} annotator is installed to make the control map (the operator registers one with "
            "`daguerre models add PATH --kind annotator`); or send a ready-made map with controlnet_preprocess=false",
        )
    return controlnet, _auxiliary(annotators[-1], name)
