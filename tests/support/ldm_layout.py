"""diffusers -> original (LDM/SGM, A1111/Civitai) state-dict layout for SD 1.x and SDXL.

diffusers' library only converts the other way (single_file_utils); its reverse lives in a
repository script that is not installed with the package. This mirrors that script's renaming so
the tiny test and demo checkpoints can be written as single files that users' real checkpoints
look like, and loaded through the same `from_single_file` path.
"""

from __future__ import annotations

import torch

_UNET_TOP = [
    ("time_embed.0.", "time_embedding.linear_1."),
    ("time_embed.2.", "time_embedding.linear_2."),
    ("input_blocks.0.0.", "conv_in."),
    ("out.0.", "conv_norm_out."),
    ("out.2.", "conv_out."),
]
_UNET_RESNET = [
    ("in_layers.0", "norm1"),
    ("in_layers.2", "conv1"),
    ("out_layers.0", "norm2"),
    ("out_layers.3", "conv2"),
    ("emb_layers.1", "time_emb_proj"),
    ("skip_connection", "conv_shortcut"),
]


def _unet_prefixes(attention_down: tuple[bool, ...], attention_up: tuple[bool, ...]) -> list[tuple[str, str]]:
    """The block renaming of a UNet whose levels have attention as the flags say (SD 1.x: the top
    three going down; SDXL: the lower two), three resnets per level going up, two going down."""
    levels = len(attention_down)
    pairs: list[tuple[str, str]] = []
    for i in range(levels):
        for j in range(2):
            pairs.append((f"input_blocks.{3 * i + j + 1}.0.", f"down_blocks.{i}.resnets.{j}."))
            if attention_down[i]:
                pairs.append((f"input_blocks.{3 * i + j + 1}.1.", f"down_blocks.{i}.attentions.{j}."))
        for j in range(3):
            pairs.append((f"output_blocks.{3 * i + j}.0.", f"up_blocks.{i}.resnets.{j}."))
            if attention_up[i]:
                pairs.append((f"output_blocks.{3 * i + j}.1.", f"up_blocks.{i}.attentions.{j}."))
        if i < levels - 1:
            pairs.append((f"input_blocks.{3 * (i + 1)}.0.op.", f"down_blocks.{i}.downsamplers.0.conv."))
            pairs.append((f"output_blocks.{3 * i + 2}.{2 if attention_up[i] else 1}.", f"up_blocks.{i}.upsamplers.0."))
    pairs.append(("middle_block.1.", "mid_block.attentions.0."))
    for j in range(2):
        pairs.append((f"middle_block.{2 * j}.", f"mid_block.resnets.{j}."))
    return pairs


_SD1_ATTENTION = ((True, True, True, False), (False, True, True, True))
_SDXL_ATTENTION = ((False, True, True), (True, True, False))
# SDXL's addition embedding (pooled text and size conditioning).
_SDXL_TOP = [("label_emb.0.0.", "add_embedding.linear_1."), ("label_emb.0.2.", "add_embedding.linear_2.")]


def _vae_prefixes() -> list[tuple[str, str]]:
    pairs = [
        ("nin_shortcut", "conv_shortcut"),
        ("norm_out", "conv_norm_out"),
        ("mid.attn_1.", "mid_block.attentions.0."),
    ]
    for i in range(4):
        for j in range(2):
            pairs.append((f"encoder.down.{i}.block.{j}.", f"encoder.down_blocks.{i}.resnets.{j}."))
        if i < 3:
            pairs.append((f"down.{i}.downsample.", f"down_blocks.{i}.downsamplers.0."))
            pairs.append((f"up.{3 - i}.upsample.", f"up_blocks.{i}.upsamplers.0."))
        for j in range(3):
            pairs.append((f"decoder.up.{3 - i}.block.{j}.", f"decoder.up_blocks.{i}.resnets.{j}."))
    for j in range(2):
        pairs.append((f"mid.block_{j + 1}.", f"mid_block.resnets.{j}."))
    return pairs


_VAE_ATTENTION = [
    ("norm.", "group_norm."),
    ("q.", "to_q."),
    ("k.", "to_k."),
    ("v.", "to_v."),
    ("proj_out.", "to_out.0."),
]


def _rename(key: str, pairs: list[tuple[str, str]]) -> str:
    for ldm, hf in pairs:
        key = key.replace(hf, ldm)
    return key


def unet_to_ldm(state: dict[str, torch.Tensor], sdxl: bool = False) -> dict[str, torch.Tensor]:
    prefixes = _unet_prefixes(*(_SDXL_ATTENTION if sdxl else _SD1_ATTENTION))
    top = _UNET_TOP + (_SDXL_TOP if sdxl else [])
    out = {}
    for key, value in state.items():
        new = _rename(key, top)
        if "resnets" in key:
            new = _rename(new, _UNET_RESNET)
        out["model.diffusion_model." + _rename(new, prefixes)] = value
    return out


def vae_to_ldm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    prefixes = _vae_prefixes()
    out = {}
    for key, value in state.items():
        new = _rename(key, prefixes)
        if "attentions" in key:
            new = _rename(new, _VAE_ATTENTION)
            # The original VAE attention projections are 1x1 convolutions, diffusers' are linear.
            if new.endswith(("q.weight", "k.weight", "v.weight", "proj_out.weight")) and value.ndim == 2:
                value = value.reshape(*value.shape, 1, 1)
        out["first_stage_model." + new] = value
    return out


def text_encoder_to_ldm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # transformers >= 5.6 flattened CLIPTextModel's keys; SD checkpoints keep the `text_model.` level.
    return {
        "cond_stage_model.transformer." + (k if k.startswith("text_model.") else "text_model." + k): v
        for k, v in state.items()
    }


def to_ldm_state_dict(
    unet: dict[str, torch.Tensor], vae: dict[str, torch.Tensor], text_encoder: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    return {**unet_to_ldm(unet), **vae_to_ldm(vae), **text_encoder_to_ldm(text_encoder)}


def open_clip_to_sgm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SDXL's second text encoder (CLIPTextModelWithProjection) in OpenCLIP's layout, as SDXL
    single files carry it: fused q/k/v projections, `text_projection` as a matrix applied on the right."""
    out: dict[str, torch.Tensor] = {}
    state = {k.removeprefix("text_model."): v for k, v in state.items()}
    renames = [
        ("encoder.layers.", "transformer.resblocks."),
        ("self_attn.out_proj.", "attn.out_proj."),
        ("layer_norm1.", "ln_1."),
        ("layer_norm2.", "ln_2."),
        ("mlp.fc1.", "mlp.c_fc."),
        ("mlp.fc2.", "mlp.c_proj."),
    ]
    for key, value in state.items():
        if ".self_attn." in key and key.rsplit(".", 2)[-2] in ("q_proj", "k_proj", "v_proj"):
            if key.rsplit(".", 2)[-2] != "q_proj":
                continue  # fused with q below
            base, kind = key.rsplit(".", 2)[0], key.rsplit(".", 1)[-1]
            fused = torch.cat([state[f"{base}.{p}_proj.{kind}"] for p in ("q", "k", "v")])
            block = base.removeprefix("encoder.layers.").split(".")[0]
            out[f"transformer.resblocks.{block}.attn.in_proj_{kind}"] = fused
        elif key == "embeddings.token_embedding.weight":
            out["token_embedding.weight"] = value
        elif key == "embeddings.position_embedding.weight":
            out["positional_embedding"] = value
        elif key.startswith("final_layer_norm."):
            out["ln_final." + key.removeprefix("final_layer_norm.")] = value
        elif key == "text_projection.weight":
            out["text_projection"] = value.T.contiguous()
        elif not key.startswith("embeddings.position_ids"):
            out[_rename_forward(key, renames)] = value
    return {"conditioner.embedders.1.model." + k: v for k, v in out.items()}


def _rename_forward(key: str, pairs: list[tuple[str, str]]) -> str:
    for hf, ldm in pairs:
        key = key.replace(hf, ldm)
    return key


def to_sgm_state_dict(
    unet: dict[str, torch.Tensor],
    vae: dict[str, torch.Tensor],
    text_encoder: dict[str, torch.Tensor],
    text_encoder_2: dict[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """An SDXL pipeline's weights as SDXL single files (SGM layout) hold them."""
    clip = {
        "conditioner.embedders.0.transformer." + (k if k.startswith("text_model.") else "text_model." + k): v
        for k, v in text_encoder.items()
    }
    return {**unet_to_ldm(unet, sdxl=True), **vae_to_ldm(vae), **clip, **open_clip_to_sgm(text_encoder_2)}
