"""Tiny random-weight models of the real architectures, for the demo and the tests.

They keep the real SD 1.5 topology and key layout (four UNet levels, a four-level VAE with scale
factor 8, a CLIP text encoder with the real 49408-token vocabulary) at widths small enough to run
on a CPU in a fraction of a second, the way diffusers' own test suite builds its dummy components.
The demo's image model (`build_demo_sd15`) keeps the key layout but not the topology: it trades
attention levels and depth for speed at full-size requests. Their outputs are noise.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer, T5Tokenizer

from daguerre.engine.diffusers_classes import (
    AutoencoderKL,
    AutoencoderKLWan,
    ControlNetModel,
    DiffusionPipeline,
    EulerDiscreteScheduler,
    MotionAdapter,
    PNDMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
    UniPCMultistepScheduler,
    WanImageToVideoPipeline,
    WanPipeline,
    WanTransformer3DModel,
)
from daguerre.engine.loading.clip_tokenizer import write_clip_tokenizer


def build_tiny_sd15(folder: Path, seed: int = 0) -> Path:
    """Write a diffusers folder of a tiny random SD 1.5-topology pipeline; same seed, same bytes."""
    torch.manual_seed(seed)
    # Widths in SD 1.5's 1:2:4:4 ratio (320, 640, 1280, 1280) so every layer of the real model,
    # shortcut convolutions included, exists here under the same name.
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32, 64, 64),
        layers_per_block=2,
        norm_num_groups=8,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=(
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
    )
    return _save_sd15(folder, unet, _tiny_vae(sample_size=64))


def build_demo_sd15(folder: Path, seed: int = 0) -> Path:
    """Write the demo's image model: SD 1.5's pipeline class, block types and key naming, in a
    topology chosen for speed on a CPU, so that the contract's default request (512x768, 30 steps,
    guidance on) answers in seconds. Its outputs are noise, like every model here.

    At 512x768 the tiny test model spends nearly all its time in self-attention over the
    6144-token latent of the top levels (SD 1.5 attends at the three highest resolutions); here
    only the lowest resolution (the last level, 8x12 tokens, and the mid block) attends, with one
    layer per block; the VAE has one layer per block and no mid-block attention (it would attend
    over the whole latent), and keeps four levels, so the scale factor stays 8 and sizes behave as
    in SD 1.5. The tests keep the topology-exact `build_tiny_sd15`."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32, 64, 64),
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
    )
    vae = _tiny_vae(layers_per_block=1, sample_size=512, mid_block_add_attention=False)
    return _save_sd15(folder, unet, vae)


def _save_sd15(folder: Path, unet: UNet2DConditionModel, vae: AutoencoderKL) -> Path:
    """An SD 1.5 pipeline folder around `unet` and `vae`: a 2-layer CLIP text encoder with the real
    vocabulary, the real tokenizer and SD 1.5's scheduler settings."""
    text_encoder = CLIPTextModel(_tiny_clip(32, "quick_gelu", 32))
    tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(folder / "tokenizer"))
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        skip_prk_steps=True,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        # diffusers takes None for both (with requires_safety_checker=False) but annotates them as required.
        safety_checker=None,  # type: ignore[arg-type]
        feature_extractor=None,  # type: ignore[arg-type]
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def build_tiny_sdxl(folder: Path, seed: int = 0) -> Path:
    """Write a diffusers folder of a tiny random SDXL-topology pipeline; same seed, same bytes.

    SDXL's layout at small widths, as diffusers' own SDXL tests build it: three UNet levels, the
    first without attention, linear projections, several transformer layers deeper down, and the
    "text_time" addition embedding that takes the pooled text embedding and the size conditioning.
    The two text encoders have different widths, as CLIP ViT-L (768) and OpenCLIP ViT-bigG (1280)
    do: single-file loading tells them apart by width."""
    torch.manual_seed(seed)
    unet = _sdxl_unet(
        layers_per_block=2,
        sample_size=16,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 2),  # SDXL: (1, 2, 10)
        attention_head_dim=(2, 4, 8),
    )
    return _save_sdxl(folder, unet, _tiny_vae(sample_size=128, scaling_factor=0.13025, force_upcast=True))


def build_demo_sdxl(folder: Path, seed: int = 0) -> Path:
    """Write the demo's SDXL model: SDXL's pipeline class, encoders and key naming, with attention
    at the lowest UNet level only and one layer per block, so that its native 1024x1024 answers in
    seconds on a CPU (see build_demo_sd15). Its outputs are noise."""
    torch.manual_seed(seed)
    unet = _sdxl_unet(
        layers_per_block=1,
        sample_size=128,
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=1,
        attention_head_dim=8,
    )
    vae = _tiny_vae(
        sample_size=128, scaling_factor=0.13025, force_upcast=True, layers_per_block=1, mid_block_add_attention=False
    )
    return _save_sdxl(folder, unet, vae)


def _sdxl_unet(**topology: Any) -> UNet2DConditionModel:
    unet: UNet2DConditionModel = UNet2DConditionModel(
        block_out_channels=(16, 32, 64),  # SDXL: (320, 640, 1280)
        norm_num_groups=8,
        in_channels=4,
        out_channels=4,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        # Six size numbers of addition_time_embed_dim each, and the pooled embedding.
        projection_class_embeddings_input_dim=6 * 8 + _SDXL_POOLED,
        cross_attention_dim=_SDXL_CLIP_L + _SDXL_CLIP_G,
        **topology,
    )
    return unet


# Widths of the tiny SDXL text encoders (CLIP ViT-L, OpenCLIP ViT-bigG) and of the pooled embedding.
_SDXL_CLIP_L, _SDXL_CLIP_G, _SDXL_POOLED = 32, 48, 32


def _tiny_vae(layers_per_block: int = 2, **config: Any) -> AutoencoderKL:
    vae: AutoencoderKL = AutoencoderKL(
        block_out_channels=(8, 16, 32, 32),  # SD's and SDXL's VAE: (128, 256, 512, 512)
        layers_per_block=layers_per_block,
        norm_num_groups=8,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        **config,
    )
    return vae


def _tiny_clip(hidden_size: int, hidden_act: str, projection_dim: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        hidden_size=hidden_size,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=49408,
        max_position_embeddings=77,
        projection_dim=projection_dim,
        hidden_act=hidden_act,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )


def _save_sdxl(folder: Path, unet: UNet2DConditionModel, vae: AutoencoderKL) -> Path:
    """An SDXL pipeline folder around `unet` and `vae`: two 2-layer text encoders (the second with
    the projection that gives the pooled embedding), the real tokenizers and SDXL's scheduler."""
    from daguerre.engine.families.sdxl.family import OPEN_CLIP_PAD

    text_encoder = CLIPTextModel(_tiny_clip(_SDXL_CLIP_L, "quick_gelu", _SDXL_CLIP_L))
    text_encoder_2 = CLIPTextModelWithProjection(_tiny_clip(_SDXL_CLIP_G, "gelu", _SDXL_POOLED))
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )
    pipe = StableDiffusionXLPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=CLIPTokenizer.from_pretrained(write_clip_tokenizer(folder / "tokenizer")),
        tokenizer_2=CLIPTokenizer.from_pretrained(write_clip_tokenizer(folder / "tokenizer_2", OPEN_CLIP_PAD)),
        scheduler=scheduler,
        add_watermarker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def build_tiny_rrdbnet(path: Path, scale: int, seed: int = 0, num_feat: int = 16, num_block: int = 1) -> Path:
    """Write a tiny random RRDBNet (ESRGAN / Real-ESRGAN) in BasicSR's key layout, as Real-ESRGAN's
    releases ship it: `{"params_ema": ...}` in a .pth, or the bare state dict in a .safetensors.

    As in BasicSR, x2 folds the input with a 2x pixel-unshuffle (12 input channels) and then
    upsamples 4x like x4 does. Growth channels stay at 32, which spandrel assumes. Weights are scaled
    so the output varies with the input around mid-grey instead of saturating.
    """
    if scale not in (2, 4):
        raise ValueError(f"scale must be 2 or 4, not {scale}")
    generator = torch.Generator().manual_seed(seed)
    growth = 32
    state: dict[str, torch.Tensor] = {}

    def conv(name: str, out_channels: int, in_channels: int, gain: float = 1.0, bias: float = 0.0) -> None:
        std = gain * (2.0 / (in_channels * 9)) ** 0.5  # He initialisation, scaled
        state[f"{name}.weight"] = torch.randn(out_channels, in_channels, 3, 3, generator=generator) * std
        state[f"{name}.bias"] = torch.full((out_channels,), bias)

    conv("conv_first", num_feat, 3 * (4 if scale == 2 else 1))
    for block in range(num_block):
        for rdb in (1, 2, 3):
            for index in range(1, 6):
                # BasicSR scales the dense blocks' initial weights by 0.1 as well.
                out_channels = num_feat if index == 5 else growth
                conv(f"body.{block}.rdb{rdb}.conv{index}", out_channels, num_feat + (index - 1) * growth, 0.1)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        conv(name, num_feat, num_feat)
    conv("conv_last", 3, num_feat, 0.1, 0.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"params_ema": state}, path)
    return path


def _randomize(parameters: list[torch.Tensor], std: float) -> None:
    with torch.no_grad():
        for parameter in parameters:
            parameter.normal_(0.0, std)


def build_tiny_lora(
    base: Path | DiffusionPipeline,
    target: Path,
    layout: str = "diffusers",
    seed: int = 0,
    extra_unet_targets: tuple[str, ...] = (),
    rank: int = 4,
) -> Path:
    """A random rank-`rank` LoRA (UNet attention and every CLIP encoder's attention) for a tiny
    pipeline of any family, saved as one
    .safetensors file in the diffusers layout (`unet.…lora.down`, as diffusers' training scripts
    write it) or the kohya/A1111 one (`lora_unet_…lora_down`, `lora_te_…`, with alphas), as
    Civitai LoRAs are. `extra_unet_targets` adds UNet layers, e.g. ("proj_in", "proj_out") as
    diffusers' training scripts target them; in the diffusers layout those keep peft's names
    (`proj_in.lora_A`), so the file mixes both naming schemes, as those scripts' files do.
    `base` is the pipeline's folder, or the pipeline itself (left unchanged) when building several."""
    from diffusers.utils.state_dict_utils import convert_state_dict_to_diffusers, convert_state_dict_to_kohya
    from peft import LoraConfig, get_peft_model_state_dict

    pipe = DiffusionPipeline.from_pretrained(base, local_files_only=True) if isinstance(base, Path) else base
    # The text encoders a LoRA of the family targets: SDXL has two (kohya prefixes lora_te1_, lora_te2_).
    encoders = [name for name in ("text_encoder", "text_encoder_2") if getattr(pipe, name, None) is not None]
    # The adapters go on copies, so a pipeline passed in stays as it was for the next build.
    unet_model = copy.deepcopy(pipe.unet)
    text_models = {name: copy.deepcopy(getattr(pipe, name)) for name in encoders}
    torch.manual_seed(seed)
    unet_model.add_adapter(
        LoraConfig(r=rank, lora_alpha=rank, target_modules=["to_q", "to_k", "to_v", "to_out.0", *extra_unet_targets])
    )
    for model in text_models.values():
        model.add_adapter(
            LoraConfig(r=rank, lora_alpha=rank, target_modules=["q_proj", "k_proj", "v_proj", "out_proj"])
        )
    # peft starts lora_B at zero (no effect); random both ways so the LoRA visibly changes the image.
    for model in (unet_model, *text_models.values()):
        _randomize([p for n, p in model.named_parameters() if "lora_" in n], 0.05)
    unet = get_peft_model_state_dict(unet_model)
    texts = {name: get_peft_model_state_dict(model) for name, model in text_models.items()}
    target.parent.mkdir(parents=True, exist_ok=True)
    if layout == "diffusers":
        # save_lora_weights comes from each family's LoRA loader mixin, which DiffusionPipeline lacks.
        family_class: Any = type(pipe)
        family_class.save_lora_weights(
            target.parent,
            unet_lora_layers=convert_state_dict_to_diffusers(unet),
            weight_name=target.name,
            **{f"{name}_lora_layers": convert_state_dict_to_diffusers(state) for name, state in texts.items()},
        )
    elif layout == "kohya":
        peft = {f"unet.{k}": v for k, v in unet.items()}
        for name, state in texts.items():
            peft |= {f"{name}.{k}": v for k, v in state.items()}
        converted = convert_state_dict_to_kohya(peft)
        # diffusers writes "lora_te1_" and "lora_te2_" before the (flattened) CLIP module names;
        # kohya files keep the `text_model_` level, and SD 1.x files call the one encoder "lora_te_".
        prefixes = {"lora_te1_": "lora_te1_text_model_", "lora_te2_": "lora_te2_text_model_"}
        if len(encoders) == 1:
            prefixes["lora_te1_"] = "lora_te_text_model_"
        kohya = {}
        for key, value in converted.items():
            for old, new_prefix in prefixes.items():
                # CLIPTextModelWithProjection still has the `text_model` level.
                if key.startswith(old) and not key.startswith(old + "text_model_"):
                    key = new_prefix + key.removeprefix(old)
                    break
            kohya[key] = value.contiguous()
        save_file(kohya, str(target))
    else:
        raise ValueError(f"unknown LoRA layout {layout!r}; known: diffusers, kohya")
    return target


def build_tiny_controlnet(
    base: Path | UNet2DConditionModel,
    target: Path,
    seed: int = 0,
    conditioning_channels: tuple[int, int, int, int] = (8, 16, 32, 64),
) -> Path:
    """A ControlNet made from a UNet (`base`: the pipeline's folder, or the UNet itself), as
    ControlNet training starts; its zero convolutions get random weights so that the control map
    visibly steers the image. `conditioning_channels` are the widths of the small network that
    brings the control map down to the latent size (SD 1.5's ControlNets: 16, 32, 96, 256)."""
    unet = (
        UNet2DConditionModel.from_pretrained(base, subfolder="unet", local_files_only=True)
        if isinstance(base, Path)
        else base
    )
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=conditioning_channels)
    torch.manual_seed(seed)
    # The zero convolutions, the map's way in (the conditioning embedding's last layer) included:
    # left at zero, the ControlNet would ignore the control map.
    zero_convs = [
        *controlnet.controlnet_down_blocks.parameters(),
        *controlnet.controlnet_mid_block.parameters(),
        *controlnet.controlnet_cond_embedding.conv_out.parameters(),
    ]
    _randomize(zero_convs, 0.05)
    controlnet.save_pretrained(target, safe_serialization=True)
    return target


def build_tiny_depth_annotator(target: Path, seed: int = 0) -> Path:
    """A tiny random Depth Anything model with its image processor, loadable by transformers'
    depth-estimation pipeline."""
    from transformers import (
        DepthAnythingConfig,
        DepthAnythingForDepthEstimation,
        Dinov2Config,
        DPTImageProcessor,
    )

    torch.manual_seed(seed)
    backbone = Dinov2Config(
        hidden_size=16,
        num_hidden_layers=4,
        num_attention_heads=2,
        patch_size=14,
        image_size=56,
        reshape_hidden_states=False,
    )
    backbone.out_features = ["stage1", "stage2", "stage3", "stage4"]  # a property, not a config field
    config = DepthAnythingConfig(
        backbone_config=backbone,
        neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16,
        head_hidden_size=8,
        reassemble_hidden_size=16,
    )
    DepthAnythingForDepthEstimation(config).save_pretrained(target)
    DPTImageProcessor(
        size={"height": 56, "width": 56}, keep_aspect_ratio=True, ensure_multiple_of=14, do_pad=False
    ).save_pretrained(target)
    return target


def _openpose_body_model() -> torch.nn.Module:
    """controlnet_aux's OpenPose body network, from its defining module alone (it imports only
    torch). Importing it the usual way runs controlnet_aux's __init__, which imports every annotator
    the package ships (timm, segment-anything, a mediapipe check): seconds, and a screen of
    warnings, that writing random weights does not need."""
    import importlib.util

    package = importlib.util.find_spec("controlnet_aux")  # finds the package without running it
    if package is None or not package.submodule_search_locations:
        raise ModuleNotFoundError("controlnet_aux is not installed")
    path = Path(package.submodule_search_locations[0]) / "open_pose" / "model.py"
    spec = importlib.util.spec_from_file_location("daguerre_openpose_body_model", path)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    network: torch.nn.Module = module.bodypose_model()
    return network


def build_tiny_openpose_annotator(target: Path, seed: int = 0) -> Path:
    """controlnet_aux's OpenPose body network (the real architecture; it has no width setting, so
    this is about 200 MB) with random weights, saved as body_pose_model.pth in the original key
    layout. The last stage's output layers are zeroed: random heatmaps would be full of spurious
    peaks that make the keypoint grouping crawl, whereas zero heatmaps find nobody, which is the
    map OpenPose draws for a photo without people."""
    torch.manual_seed(seed)
    model = _openpose_body_model()
    state = model.state_dict()
    for name, tensor in state.items():
        if name.split(".")[1].startswith("Mconv7_stage6"):
            tensor.zero_()
    target.mkdir(parents=True, exist_ok=True)
    # The original file's keys lack the stage prefix (model0.conv1_1.weight -> conv1_1.weight).
    torch.save({name.split(".", 1)[1]: tensor for name, tensor in state.items()}, target / "body_pose_model.pth")
    return target


def _tiny_t5_tokenizer() -> tuple[T5Tokenizer, int]:
    """A T5-style (Unigram, SentencePiece-like) tokenizer over single characters.

    The real UMT5 vocabulary is a 256k-piece SentencePiece model that only a model hub ships; a
    character vocabulary exercises the same code path (padding to 512, attention mask, EOS).
    """
    import string

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    chars = string.ascii_letters + string.digits + string.punctuation
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(c, -3.0) for c in chars] + [("▁" + c, -2.5) for c in chars]
    backend = Tokenizer(models.Unigram(pieces, unk_id=2))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    tokenizer = T5Tokenizer(
        tokenizer_object=backend, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", extra_ids=0
    )
    return tokenizer, len(pieces)


def build_tiny_wan(folder: Path, image_to_video: bool = False, seed: int = 0) -> Path:
    """Write a diffusers folder of a tiny random Wan 2.1 pipeline (T2V, or I2V with a CLIP image
    encoder); same seed, same bytes. rope_max_seq_len stays at the real 1024: smaller values break
    above 512 px.
    """
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModel,
        UMT5Config,
        UMT5EncoderModel,
    )

    torch.manual_seed(seed)
    tokenizer, vocab_size = _tiny_t5_tokenizer()
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=vocab_size,
            d_model=32,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
    )
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=36 if image_to_video else 16,
        out_channels=16,
        text_dim=32,
        freq_dim=256,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=1024,
        image_dim=8 if image_to_video else None,
    )
    # Wan 2.1's own scheduler settings (flow matching, shift 3.0 for 480p).
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    common = {"tokenizer": tokenizer, "text_encoder": text_encoder, "vae": vae, "transformer": transformer}
    if image_to_video:
        image_encoder = CLIPVisionModel(
            CLIPVisionConfig(
                hidden_size=8,
                projection_dim=8,
                num_hidden_layers=2,
                num_attention_heads=2,
                image_size=32,
                intermediate_size=16,
                patch_size=4,
            )
        )
        processor = CLIPImageProcessor(crop_size=32, size=32)
        pipe: WanPipeline | WanImageToVideoPipeline = WanImageToVideoPipeline(
            **common, scheduler=scheduler, image_encoder=image_encoder, image_processor=processor
        )
    else:
        pipe = WanPipeline(**common, scheduler=scheduler)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def build_tiny_motion_adapter(
    folder: Path,
    seed: int = 0,
    block_out_channels: tuple[int, ...] = (16, 32, 64, 64),
    layers_per_block: int = 2,
) -> Path:
    """Write a tiny random AnimateDiff MotionAdapter; its modules sit in the UNet's blocks, so its
    widths and layers per block are those of the UNet it animates (by default build_tiny_sd15's)."""
    torch.manual_seed(seed)
    adapter = MotionAdapter(
        block_out_channels=block_out_channels,
        motion_layers_per_block=layers_per_block,
        motion_norm_num_groups=8,
        motion_num_attention_heads=2,
        motion_max_seq_length=32,
    )
    adapter.save_pretrained(folder, safe_serialization=True)
    return folder
