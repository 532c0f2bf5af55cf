"""Recognise what a checkpoint on disk is before it is registered, without loading its weights."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from daguerre.engine import families

_SD1_UNET = "model.diffusion_model.input_blocks.0.0.weight"
_SD1_CLIP = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"
_SD2_CLIP = "cond_stage_model.model.token_embedding.weight"
_SDXL_CLIP = "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight"
_SDXL_OPEN_CLIP = "conditioner.embedders.1.model.token_embedding.weight"
_SDXL_REFINER = "conditioner.embedders.0.model.token_embedding.weight"


class UnsupportedModel(ValueError):
    pass


@dataclass(frozen=True)
class CheckpointInfo:
    format: str  # diffusers | single_file
    family: str
    options: dict[str, Any] = field(default_factory=dict)  # kind-specific facts for the catalog


def _keys(path: Path) -> set[str]:
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as f:
            return set(f.keys())
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return set(state.get("state_dict", state))


def inspect_checkpoint(path: Path) -> CheckpointInfo:
    if path.is_dir():
        index = path / "model_index.json"
        if not index.exists():
            raise UnsupportedModel(f"{path} is a folder without model_index.json: not a diffusers pipeline")
        pipeline = str(json.loads(index.read_text())["_class_name"]).replace("Img2Img", "")
        found = families.by_pipeline_class(pipeline)
        if found is None:
            known = ", ".join(families.traits(name).pipeline_class for name in families.names())
            raise UnsupportedModel(f"{path} holds a {pipeline}; image models are {known} folders")
        return CheckpointInfo("diffusers", found.name)
    if path.suffix not in (".safetensors", ".ckpt", ".pt", ".pth"):
        raise UnsupportedModel(f"{path}: expected a .safetensors or .ckpt checkpoint, or a diffusers folder")
    keys = _keys(path)
    if _SDXL_REFINER in keys and _SDXL_CLIP not in keys:
        raise UnsupportedModel(f"{path} is the SDXL refiner, which renders nothing alone; register an SDXL base model")
    if _SDXL_CLIP in keys or _SDXL_OPEN_CLIP in keys:
        # SDXL, Pony, Illustrious and NoobAI checkpoints all share SDXL's architecture and layout.
        if _SD1_UNET not in keys or _SDXL_CLIP not in keys or _SDXL_OPEN_CLIP not in keys:
            raise UnsupportedModel(f"{path} is not a whole SDXL checkpoint (UNet and both text encoders)")
        return CheckpointInfo("single_file", "sdxl")
    if _SD2_CLIP in keys:
        raise UnsupportedModel(f"{path} is an SD 2.x checkpoint; this server serves the SD 1.x family")
    if _SD1_UNET not in keys or _SD1_CLIP not in keys:
        raise UnsupportedModel(f"{path} is not an SD 1.x or SDXL checkpoint in the A1111/Civitai layout")
    return CheckpointInfo("single_file", "sd15")


def inspect_upscaler(path: Path) -> CheckpointInfo:
    """A super-resolution model spandrel recognises (ESRGAN, Real-ESRGAN, SwinIR, ...); loading it
    is the only reliable check, and these files are small. Records its native scale."""
    # spandrel imports torchvision: only when an upscaler is inspected.
    from spandrel import ImageModelDescriptor, ModelLoader, UnsupportedModelError

    if path.is_dir() or path.suffix not in (".pth", ".pt", ".ckpt", ".safetensors"):
        raise UnsupportedModel(f"{path}: expected an upscaler's .pth or .safetensors file")
    try:
        descriptor = ModelLoader().load_from_file(path)
    except UnsupportedModelError:
        raise UnsupportedModel(
            f"{path} is not a model architecture spandrel recognises (ESRGAN, Real-ESRGAN, SwinIR, ...)"
        ) from None
    except Exception as exc:  # unpickling and safetensors raise many kinds for unreadable files
        raise UnsupportedModel(f"{path} could not be read as a model: {exc}") from None
    if not isinstance(descriptor, ImageModelDescriptor) or descriptor.purpose != "SR":
        raise UnsupportedModel(
            f"{path} is a {descriptor.architecture.name} {descriptor.purpose} model, not a super-resolution upscaler"
        )
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise UnsupportedModel(f"{path} is not an RGB upscaler ({descriptor.input_channels} input channels)")
    return CheckpointInfo("single_file", descriptor.architecture.id.lower(), {"scale": descriptor.scale})


# How the tensors a LoRA applies end, in the kohya/A1111 layout, diffusers' own (old and peft
# names) and DoRA; alphas are scalars of the kohya layout. Anything else (LyCORIS LoHa/LoKr
# `hada_`/`lokr_` tensors, LoCon's `lora_mid`, stray model weights) would be dropped on load.
_LORA_TENSOR_ENDINGS = (
    ".lora_down.weight",
    ".lora_up.weight",
    ".alpha",
    ".dora_scale",
    ".lora_A.weight",
    ".lora_B.weight",
    ".lora.down.weight",
    ".lora.up.weight",
    ".lora_linear_layer.down.weight",
    ".lora_linear_layer.up.weight",
    ".lora_magnitude_vector",
)
_LORA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_", "unet.", "text_encoder.", "text_encoder_2.")
# Names only SDXL LoRAs use: the second text encoder, and kohya's SGM-style UNet block names.
_SDXL_LORA_MARKERS = (
    "lora_te1_",
    "lora_te2_",
    "text_encoder_2.",
    "lora_unet_input_blocks_",
    "lora_unet_output_blocks_",
)


def inspect_lora(path: Path) -> CheckpointInfo:
    """A LoRA .safetensors file (or a folder with pytorch_lora_weights.safetensors) in the
    kohya/A1111 layout (`lora_unet_...`, `lora_te_...`) or the diffusers one (`unet.`, `text_encoder.`).

    Every tensor must be one a LoRA loader applies to the UNet or the text encoder: a file with
    others is refused, naming them, since they would be dropped without a word. Whether each one
    finds its layer is checked again when the engine loads the file against the model."""
    file = path / "pytorch_lora_weights.safetensors" if path.is_dir() else path
    if file.suffix != ".safetensors" or not file.exists():
        raise UnsupportedModel(f"{path}: expected a LoRA .safetensors file (or a diffusers LoRA folder)")
    keys = _keys(file)
    family = "sdxl" if any(k.startswith(_SDXL_LORA_MARKERS) for k in keys) else _lora_family_by_width(file, keys)
    if any(k.startswith(("lora_unet_", "lora_te")) for k in keys):
        layout = "kohya"
    elif any(k.startswith(("unet.", "text_encoder.")) for k in keys):
        layout = "diffusers"
    else:
        raise UnsupportedModel(f"{path} is not a LoRA in the kohya/A1111 or diffusers layout")
    foreign = sorted(k for k in keys if not (k.startswith(_LORA_PREFIXES) and k.endswith(_LORA_TENSOR_ENDINGS)))
    if foreign:
        raise UnsupportedModel(
            f"{path}: {len(foreign)} of its {len(keys)} tensors are not LoRA weights of the UNet or the text "
            f"encoder that this server applies (e.g. {', '.join(foreign[:3])}); they would be dropped, so the "
            "file is refused (LyCORIS LoHa/LoKr and LoCon files are not supported)"
        )
    return CheckpointInfo("diffusers" if path.is_dir() else "single_file", family, {"layout": layout})


# The width of the text a UNet's cross-attention reads: SD 1.x's CLIP ViT-L, SDXL's two encoders side by side.
_CROSS_ATTENTION_WIDTHS = {768: "sd15", 2048: "sdxl"}


def _lora_family_by_width(file: Path, keys: set[str]) -> str:
    """The family of a UNet-only LoRA named like both families: from the width its cross-attention
    key projections read (a down/A matrix is rank x input width). SD 1.x unless it says 2048."""
    for key in sorted(keys):
        if ("attn2" in key and "to_k" in key) and key.endswith(
            ("lora_down.weight", "lora_A.weight", "lora.down.weight")
        ):
            with safe_open(str(file), framework="pt") as handle:
                width = handle.get_slice(key).get_shape()[-1]
            return _CROSS_ATTENTION_WIDTHS.get(width, "sd15")
    return "sd15"


def inspect_controlnet(path: Path) -> CheckpointInfo:
    """A ControlNet as a diffusers folder (config.json + weights); its type comes from --controlnet."""
    config = path / "config.json"
    if not path.is_dir() or not config.exists():
        raise UnsupportedModel(f"{path}: expected a diffusers ControlNet folder (config.json and weights)")
    settings = json.loads(config.read_text())
    if settings.get("_class_name") != "ControlNetModel":
        raise UnsupportedModel(f"{path} holds a {settings.get('_class_name')}, not a ControlNetModel")
    # SDXL's ControlNets take the pooled text and size conditioning, as its UNet does.
    return CheckpointInfo("diffusers", "sdxl" if settings.get("addition_embed_type") == "text_time" else "sd15")


def inspect_annotator(path: Path) -> CheckpointInfo:
    """A depth-estimation model folder for transformers (config.json, weights, image processor),
    or a folder with OpenPose's body_pose_model.pth (controlnet_aux)."""
    if (path / "body_pose_model.pth").exists():
        return CheckpointInfo("single_file", "any", {"annotator": "openpose"})
    config = path / "config.json"
    if path.is_dir() and config.exists():
        architectures = json.loads(config.read_text()).get("architectures") or []
        if any(a.endswith("ForDepthEstimation") for a in architectures):
            if not (path / "preprocessor_config.json").exists():
                raise UnsupportedModel(f"{path} has no preprocessor_config.json (the image processor)")
            return CheckpointInfo("diffusers", "any", {"annotator": "depth"})
    raise UnsupportedModel(
        f"{path}: expected a transformers depth-estimation folder or a folder with body_pose_model.pth"
    )


def _json(path: Path) -> dict[str, Any]:
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UnsupportedModel(f"cannot read {path}: {exc}") from None
    if not isinstance(loaded, dict):
        raise UnsupportedModel(f"{path} holds no JSON object")
    return loaded


def _wan_resolutions(path: Path, transformer: dict[str, Any]) -> list[str]:
    # Wan 2.1 ships the 480p and 720p image-to-video weights as separate checkpoints of the same
    # architecture, so the folder name (as published, e.g. Wan2.1-I2V-14B-480P-Diffusers) decides
    # when it says; otherwise the 1.3B model is 480p only and the 14B models do both.
    name = path.resolve().name.lower()
    named = [r for r in ("480p", "720p") if r in name]
    if named:
        return named
    width = transformer.get("num_attention_heads", 0) * transformer.get("attention_head_dim", 0)
    return ["480p"] if width == 1536 else ["480p", "720p"]


def inspect_video(path: Path) -> CheckpointInfo:
    """A diffusers folder of Wan 2.1 (text- or image-to-video), or an AnimateDiff motion adapter."""
    if not path.is_dir():
        raise UnsupportedModel(
            f"{path}: video models are diffusers folders (a Wan 2.1 pipeline, or an AnimateDiff motion adapter)"
        )
    if (path / "model_index.json").exists():
        index = _json(path / "model_index.json")
        pipeline = index.get("_class_name")
        modes = {"WanPipeline": "t2v", "WanImageToVideoPipeline": "i2v"}
        if pipeline not in modes:
            raise UnsupportedModel(
                f"{path} holds a {pipeline}; video pipelines must be WanPipeline or WanImageToVideoPipeline"
            )
        if (index.get("transformer_2") or [None])[0] or index.get("expand_timesteps"):
            raise UnsupportedModel(f"{path} is a Wan 2.2 pipeline; this server runs Wan 2.1")
        transformer = _json(path / "transformer" / "config.json")
        options = {"mode": modes[pipeline], "architecture": "wan", "resolutions": _wan_resolutions(path, transformer)}
        return CheckpointInfo("diffusers", "wan2.1", options)
    config_file = path / "config.json"
    config = _json(config_file) if config_file.exists() else {}
    if config.get("_class_name") != "MotionAdapter":
        raise UnsupportedModel(
            f"{path} is neither a Wan pipeline folder (model_index.json) nor an AnimateDiff MotionAdapter folder"
        )
    if len(config.get("block_out_channels", ())) != 4:
        raise UnsupportedModel(f"{path} is a motion adapter for SDXL; this server animates SD 1.x checkpoints")
    options = {
        "mode": "t2v",
        "architecture": "animatediff",
        "resolutions": ["480p"],
        "max_frames": config.get("motion_max_seq_length", 32),
    }
    return CheckpointInfo("diffusers", "sd15", options)


_VAE_KEYS = ("encoder.conv_in.weight", "decoder.conv_out.weight")


def inspect_vae(path: Path) -> CheckpointInfo:
    """A VAE: a diffusers AutoencoderKL folder, or an A1111 VAE file (.safetensors, .pt, .ckpt; the
    original layout's `encoder.`/`decoder.` keys, with or without `first_stage_model.`). SD 1.5's
    and SDXL's VAEs share one architecture, so a VAE fits either family (family "any"); a file
    takes its scaling factor from the checkpoint's family."""
    if path.is_dir():
        config = path / "config.json"
        if not config.exists() or _json(config).get("_class_name") != "AutoencoderKL":
            raise UnsupportedModel(f"{path}: expected a diffusers AutoencoderKL folder (config.json and weights)")
        return CheckpointInfo("diffusers", "any")
    if path.suffix not in (".safetensors", ".ckpt", ".pt", ".pth"):
        raise UnsupportedModel(f"{path}: expected a VAE .safetensors/.pt/.ckpt file or a diffusers folder")
    keys = {key.removeprefix("first_stage_model.") for key in _keys(path)}
    if not all(key in keys for key in _VAE_KEYS):
        raise UnsupportedModel(f"{path} is not a VAE (no encoder.conv_in and decoder.conv_out weights)")
    if any(key.startswith("model.diffusion_model.") for key in keys):
        raise UnsupportedModel(f"{path} is a whole checkpoint, not a VAE; register it with --kind checkpoint")
    return CheckpointInfo("single_file", "any")


def inspect_embedding(path: Path) -> CheckpointInfo:
    if path.is_dir() or path.suffix not in (".pt", ".bin", ".safetensors"):
        raise UnsupportedModel(f"{path}: expected an embedding's .pt or .safetensors file")
    from daguerre.engine.loading.embeddings import read_embedding  # diffusers only when inspecting one

    try:
        vectors = read_embedding(path)
    except ValueError as exc:
        raise UnsupportedModel(str(exc)) from None
    first = vectors["clip_l"]
    if not isinstance(first, torch.Tensor) or first.ndim not in (1, 2):
        raise UnsupportedModel(f"{path} holds no embedding vectors")
    count = 1 if first.ndim == 1 else int(first.shape[0])
    return CheckpointInfo("single_file", "sdxl" if "clip_g" in vectors else "sd15", {"vectors": count})


# What `daguerre models add --kind K` runs to recognise a file of kind K.
INSPECTORS: dict[str, Callable[[Path], CheckpointInfo]] = {
    "checkpoint": inspect_checkpoint,
    "upscaler": inspect_upscaler,
    "lora": inspect_lora,
    "controlnet": inspect_controlnet,
    "annotator": inspect_annotator,
    "video": inspect_video,
    "vae": inspect_vae,
    "embedding": inspect_embedding,
}


def inspect_model(kind: str, path: Path) -> CheckpointInfo:
    try:
        inspector = INSPECTORS[kind]
    except KeyError:
        raise UnsupportedModel(f"unknown kind {kind!r}; known: {', '.join(INSPECTORS)}") from None
    return inspector(path)
