"""LoRAs on a resident pipeline: each loaded once, kept loaded within a bound, switched per job.

Loading a LoRA file costs a fraction of a second and never reloads the base model (peft wraps the
targeted layers). The active set is fused into the weights, so a request with LoRAs runs as fast
as one without: unfused, every wrapped layer would do two extra matmuls per call, which costs a
visible share of each step. Before fusing, the base weights of the wrapped layers are saved once,
and they are copied back when the active set changes: unfusing (subtracting the LoRA delta again)
does not give the original floats back, and costs the delta's matmuls besides. So a request
without LoRAs gets exactly the base model's output, and a LoRA never leaks into the next request.

Memory is bounded: at most `max_adapters` adapters and `max_bytes` of their tensors stay loaded;
beyond that the least recently used are deleted from the pipeline, and the saved base weights of
layers no adapter targets any more are dropped. The adapters one request names are never evicted
for each other, so that request alone may exceed the bound until the next one.

Every tensor of a file must land on a layer. diffusers 0.42 decides how to rename a UNet LoRA's
keys from its first key only, so a diffusers-layout file whose UNet keys mix peft names
(`proj_in.lora_A`, as diffusers' training scripts save for proj_in/proj_out) with the older
attention names (`to_q.lora.down`) loses every attention adapter with nothing but a peft warning.
Such files are renamed here before loading; any file whose tensors still do not all land is
refused with a message saying how many would be dropped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import torch
from diffusers.utils.state_dict_utils import DIFFUSERS_TO_PEFT, convert_state_dict, convert_unet_state_dict_to_peft
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors import safe_open
from safetensors.torch import load_file

from daguerre.engine.diffusers_classes import DiffusionPipeline
from daguerre.engine.families import of_pipeline
from daguerre.engine.jobs import LoraSpec
from daguerre.engine.loading.model_files import LocalFile, in_place
from daguerre.errors import GenerationFailed

log = logging.getLogger(__name__)

# Defaults of the `model_cache.max_loras` and `model_cache.max_lora_bytes` settings (see settings.py).
DEFAULT_MAX_ADAPTERS = 8
DEFAULT_MAX_ADAPTER_BYTES = 1024**3

# The weights of a LoRA file (alphas are scalars folded into the scaling, not tensors that land).
_PEFT_NAMES = ("lora_A", "lora_B", "lora_magnitude_vector")
_UNET_PEFT = re.compile(r"\.lora_[AB]\.")
_UNET_OLD = re.compile(r"\.lora\.(up|down)\.")


class LoraNotApplicable(GenerationFailed):
    """A LoRA file whose tensors would not all apply to the model's layers."""


@dataclass
class LoraState:
    max_adapters: int = DEFAULT_MAX_ADAPTERS
    max_bytes: int = DEFAULT_MAX_ADAPTER_BYTES
    # Adapter name -> bytes of its tensors, least recently used first.
    loaded: OrderedDict[str, int] = field(default_factory=OrderedDict)
    fused: tuple[tuple[str, float], ...] = ()  # the active (adapter, weight) set, fused into the weights
    originals: dict[BaseTunerLayer, torch.Tensor] = field(default_factory=dict)  # base weights, as loaded

    @property
    def loaded_bytes(self) -> int:
        return sum(self.loaded.values())


def adapter_name(spec: LoraSpec) -> str:
    # The path is part of the name: an id re-registered with another file must not reuse the old
    # adapter. peft keeps adapters in ModuleDicts, whose keys may not contain dots.
    digest = hashlib.sha1(spec.path.encode()).hexdigest()[:8]
    return re.sub(r"\W", "_", f"{spec.id}_v{spec.version}_{digest}")


def lora_file(path: str | Path) -> Path:
    """The .safetensors file of a LoRA given as a file or a diffusers LoRA folder."""
    path = Path(path)
    return path / "pytorch_lora_weights.safetensors" if path.is_dir() else path


def _components(pipe: DiffusionPipeline) -> list[str]:
    """What the model family lets a LoRA target (SDXL: both text encoders)."""
    return list(of_pipeline(pipe).lora_components)


def _has_adapters(layer: BaseTunerLayer) -> bool:
    return any(len(getattr(layer, name, ())) for name in layer.adapter_layer_names)


def _wrapped_layers(pipe: DiffusionPipeline) -> list[BaseTunerLayer]:
    return [
        module
        for component in _components(pipe)
        for module in getattr(pipe, component).modules()
        if isinstance(module, BaseTunerLayer) and _has_adapters(module)
    ]


def _base_weight(layer: BaseTunerLayer) -> torch.Tensor:
    # Module attributes are typed Tensor | Module; the wrapped layers are Linear and Conv2d.
    return cast(torch.Tensor, layer.get_base_layer().weight)


def adapter_tensors(pipe: DiffusionPipeline, name: str) -> list[torch.Tensor]:
    """The tensors peft holds for adapter `name` in the pipeline's UNet and text encoder."""
    marker = f".{name}."
    return [
        parameter
        for component in _components(pipe)
        for parameter_name, parameter in getattr(pipe, component).named_parameters()
        if marker in parameter_name and any(part in parameter_name for part in _PEFT_NAMES)
    ]


def _source(spec: LoraSpec, file: Path, components: list[str]) -> tuple[str | dict[str, torch.Tensor], int]:
    """What to hand load_lora_weights (the path, or a renamed state dict), and how many tensors
    of the file must land."""
    with safe_open(str(file), framework="pt") as handle:
        keys = list(handle.keys())
        metadata = handle.metadata() or {}
    expected = sum(1 for key in keys if not key.endswith(".alpha"))
    unet = [key for key in keys if key.startswith("unet.")]
    mixed = any(_UNET_PEFT.search(k) for k in unet) and any(_UNET_OLD.search(k) for k in unet)
    if not mixed:
        return str(file), expected
    state = load_file(str(file))
    # Every key to peft's names (both mappings leave keys already named so unchanged).
    renamed = convert_unet_state_dict_to_peft({k: v for k, v in state.items() if k.startswith("unet.")})
    renamed |= convert_state_dict({k: v for k, v in state.items() if not k.startswith("unet.")}, DIFFUSERS_TO_PEFT)
    # A state dict carries no adapter metadata, so the scaling the file records per component
    # (diffusers writes "unet.r", "unet.lora_alpha", ...) is folded into its up weights; loading
    # a state dict then uses alpha = r, a scaling of 1.
    config = json.loads(metadata.get("lora_adapter_metadata", "{}"))
    for component in components:
        if config.get(f"{component}.rank_pattern") or config.get(f"{component}.alpha_pattern"):
            raise LoraNotApplicable(
                f"LoRA {spec.id} (version {spec.version}) mixes two key layouts and records per-layer ranks; "
                "this server cannot apply all of it. Re-save it in the kohya layout."
            )
        rank = float(config.get(f"{component}.r", 1))
        scale = float(config.get(f"{component}.lora_alpha", rank)) / rank
        if scale != 1:
            for key in renamed:
                if key.startswith(f"{component}.") and ".lora_B." in key:
                    renamed[key] = renamed[key] * scale
    return renamed, expected


def _load(pipe: DiffusionPipeline, spec: LoraSpec, name: str, local: LocalFile) -> int:
    """Load one LoRA as adapter `name`, checking that all of it landed; returns its bytes."""
    source, expected = _source(spec, lora_file(local(spec.path, spec.sha256)), _components(pipe))
    pipe.load_lora_weights(source, adapter_name=name)
    landed = adapter_tensors(pipe, name)
    if len(landed) != expected:
        pipe.delete_adapters(name)
        raise LoraNotApplicable(
            f"LoRA {spec.id} (version {spec.version}) was not applied: only {len(landed)} of its {expected} "
            "weight tensors match a layer of this model, and the rest would be silently dropped. "
            "It may be for another model family, or in a layout this server does not read."
        )
    return sum(t.numel() * t.element_size() for t in landed)


def _evict(pipe: DiffusionPipeline, state: LoraState, keep: set[str]) -> None:
    victims: list[str] = []
    while len(state.loaded) > state.max_adapters or state.loaded_bytes > state.max_bytes:
        candidates = [name for name in state.loaded if name not in keep]
        if not candidates:
            break
        victims.append(candidates[0])
        del state.loaded[candidates[0]]
    if not victims:
        return
    pipe.delete_adapters(victims)
    # Nothing is fused here, so the base weights are exact; layers no adapter wraps any more
    # need no saved copy.
    for layer in [layer for layer in state.originals if not _has_adapters(layer)]:
        del state.originals[layer]
    log.info("unloaded LoRA adapters %s (least recently used)", ", ".join(victims))


def _restore_base_weights(state: LoraState) -> None:
    """Undo the fusion: copy the saved base weights back and tell peft that nothing is merged.
    Not diffusers' unfuse_lora: it computes and subtracts every layer's delta (a quarter of a
    switch's time on a CPU, bench/lora_switch.py --full) only for the copy to overwrite the result.
    A layer whose LoRA also merged a bias is unmerged by peft, since only weights are saved. The
    saved layers are every layer that held an adapter when the set was fused."""
    for layer, weight in state.originals.items():
        if any(getattr(layer, "lora_bias", {}).get(name) for name in layer.merged_adapters):
            layer.unmerge()
        layer.merged_adapters.clear()
        _base_weight(layer).copy_(weight)


@torch.no_grad()
def activate_loras(
    pipe: DiffusionPipeline, state: LoraState, loras: tuple[LoraSpec, ...], local: LocalFile = in_place
) -> None:
    """Make exactly `loras`, at their weights, active on `pipe`; `local` finds their files (a
    LoRA's adapter is named after its catalog path, so one registered by URL keeps its name
    whichever copy it was read from)."""
    wanted = tuple((adapter_name(spec), spec.weight) for spec in loras)
    names = [name for name, _ in wanted]
    for name in names:
        if name in state.loaded:
            state.loaded.move_to_end(name)
    if wanted == state.fused:
        return
    if state.fused:
        _restore_base_weights(state)
        state.fused = ()
    try:
        for spec, name in zip(loras, names, strict=True):
            if name not in state.loaded:
                state.loaded[name] = _load(pipe, spec, name, local)
    except Exception:
        # Deleting a file that did not apply makes peft activate another loaded adapter, unfused:
        # nothing is fused now, so nothing may be active either (the next request without LoRAs
        # finds the state it wants and changes nothing).
        if state.loaded:
            pipe.disable_lora()
        raise
    _evict(pipe, state, keep=set(names))
    if not loras:
        if state.loaded:
            pipe.disable_lora()
        return
    for layer in _wrapped_layers(pipe):
        if layer not in state.originals:  # base weights are untouched here: nothing is fused
            state.originals[layer] = _base_weight(layer).detach().clone()
    pipe.enable_lora()
    pipe.set_adapters(names, adapter_weights=[weight for _, weight in wanted])
    pipe.fuse_lora(components=_components(pipe), adapter_names=names)
    state.fused = wanted


def remove_loras(pipe: DiffusionPipeline, state: LoraState) -> None:
    """Take every LoRA out of `pipe`, leaving its plain layers with the exact base weights (for
    code that copies the UNet's state dict, which must not see peft's wrapped keys)."""
    if not state.loaded:
        return
    activate_loras(pipe, state, ())
    pipe.unload_lora_weights()
    state.loaded.clear()
    state.originals.clear()
