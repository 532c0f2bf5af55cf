"""How a loaded pipeline executes: memory format, attention kernel, fused projections, compilation.

Each is a setting (`execution.*`, see settings.py and the README's "Settings"), applied once when
a pipeline is loaded, and none changes what a model computes beyond floating-point rounding (the
README says how much; tests/test_compiled_execution.py holds each to it).

- channels_last: UNet and VAE weights in NHWC, the layout cuDNN's convolutions run fastest in on
  NVIDIA GPUs. On a CPU it saves nothing, so by default it is on for CUDA only.
- attention: "sdpa" is PyTorch's scaled_dot_product_attention (diffusers' default processor),
  which picks FlashAttention on GPUs where the dtype and head size allow it and the
  memory-efficient kernel otherwise; "classic" is diffusers' explicit matmul-softmax-matmul, kept
  for comparison and for devices whose SDPA misbehaves.
- fuse_qkv: one matmul for each attention's query, key and value projections (key and value for
  cross-attention) instead of three, through diffusers' `fuse_qkv_projections`. diffusers does not
  undo the fusion when LoRAs load, so its fused projections would silently ignore a LoRA on
  to_q/to_k/to_v; `refresh_fused_projections` copies the (LoRA-fused) weights into the fused
  layers each time the active LoRAs change (engine/loading/lora.py).
- compile: torch.compile of the UNet and of the VAE's encoder and decoder (the VAE's `decode` is
  not its `forward`, so the parts are compiled). Shapes are static (`dynamic=False`): each
  resolution bucket and batch size is compiled the first time a request uses it, and at most
  `compile_max_shapes` graphs are kept per compiled function; beyond that dynamo runs the model
  uncompiled (and says so in the log) rather than compiling without end. Inductor's caches go to
  `compile_cache_dir` (TORCHINDUCTOR_CACHE_DIR), so a restarted server reuses the generated
  kernels instead of generating them again; it still traces the model once per shape.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0, FusedAttnProcessor2_0
from peft.tuners.tuners_utils import BaseTunerLayer

from daguerre.engine.diffusers_classes import DiffusionPipeline
from daguerre.engine.options import ExecutionOptions

log = logging.getLogger(__name__)


def prepare(pipe: DiffusionPipeline, options: ExecutionOptions, device: torch.device) -> None:
    """Apply `options` to a freshly loaded SD pipeline (it has `unet` and `vae`), in place."""
    unet, vae = pipe.unet, pipe.vae
    if options.uses_channels_last(device.type):
        unet.to(memory_format=torch.channels_last)
        vae.to(memory_format=torch.channels_last)
    if options.attention == "classic":
        unet.set_attn_processor(AttnProcessor())
        vae.set_attn_processor(AttnProcessor())
    if options.fuse_qkv:
        if options.attention != "sdpa":
            raise ValueError("execution.fuse_qkv needs execution.attention = 'sdpa' (its processor is SDPA's)")
        unet.fuse_qkv_projections()
        vae.fuse_qkv_projections()
    if options.compile:
        configure_compiler(options)
        for module in (unet, vae.encoder, vae.decoder):
            module.compile(mode=options.compile_mode, dynamic=False)


def configure_compiler(options: ExecutionOptions) -> None:
    """Process-wide settings torch.compile reads: the cache directory and the shape bound. They
    are global in torch, so every compiled pipeline of this process shares them."""
    if options.compile_cache_dir is not None:
        options.compile_cache_dir.mkdir(parents=True, exist_ok=True)
        # Inductor reads the variable whenever it opens its cache, so setting it before the first
        # compilation is enough.
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(options.compile_cache_dir)
    import torch._dynamo.config as dynamo_config

    dynamo_config.recompile_limit = options.compile_max_shapes
    # A second shape must get its own static graph, not turn the first into a dynamic one.
    dynamo_config.automatic_dynamic_shapes = False


def _weight(layer: torch.nn.Module, name: str) -> torch.Tensor | None:
    if isinstance(layer, BaseTunerLayer):
        layer = layer.get_base_layer()
    value = getattr(layer, name, None)
    return value if isinstance(value, torch.Tensor) else None


@torch.no_grad()
def refresh_fused_projections(*modules: torch.nn.Module) -> int:
    """Copy each fused attention's current to_q/to_k/to_v weights (with any LoRA fused into them)
    into its fused to_qkv (or to_kv) layer, in place, so compiled graphs keep their inputs.
    Returns how many attentions were refreshed (0 when nothing is fused)."""
    refreshed = 0
    for module in modules:
        for attention in module.modules():
            if not isinstance(attention, Attention) or not attention.fused_projections:
                continue
            cross = attention.is_cross_attention
            fused_name, parts = ("to_kv", ("to_k", "to_v")) if cross else ("to_qkv", ("to_q", "to_k", "to_v"))
            fused = getattr(attention, fused_name)
            for name in ("weight", "bias"):
                target = _weight(fused, name)
                sources = [_weight(getattr(attention, part), name) for part in parts]
                if target is not None and all(source is not None for source in sources):
                    target.copy_(torch.cat([source for source in sources if source is not None]))
            refreshed += 1
    if refreshed:
        log.debug("refreshed %d fused attention projections", refreshed)
    return refreshed


@contextmanager
def unfused(module: torch.nn.Module) -> Iterator[None]:
    """`module` with plain attention projections for the duration: code that copies a UNet's
    state dict layer by layer (AnimateDiff's `from_unet2d`) refuses the fused layers' extra keys.
    Fused again afterwards, from the weights as they are then."""
    attentions = [m for m in module.modules() if isinstance(m, Attention) and m.fused_projections]
    if not attentions:
        yield
        return
    for attention in attentions:
        delattr(attention, "to_kv" if attention.is_cross_attention else "to_qkv")
        attention.fused_projections = False
    # diffusers' models declare set_attn_processor; torch.nn.Module's typing does not know it.
    set_processor = getattr(module, "set_attn_processor")  # noqa: B009
    set_processor(AttnProcessor2_0())
    try:
        yield
    finally:
        for attention in attentions:
            attention.fuse_projections(fuse=True)
        set_processor(FusedAttnProcessor2_0())
