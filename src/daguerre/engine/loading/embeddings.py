"""Textual-inversion embeddings on a resident pipeline: each loaded once into the tokenizer and text
encoder (both of them for SDXL) as new tokens, and kept; a prompt uses one by carrying its tokens.

diffusers' `load_textual_inversion` adds the tokens (`name`, `name_1`, ... for a multi-vector
embedding) and their vectors. Other tokens' vectors are untouched, so a prompt that names no
embedding encodes exactly as before. The services write an embedding named in a prompt as its
tokens (services/embeddings.py), since daguerre encodes prompts itself (A1111 weighting), not
through diffusers' prompt conversion.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from daguerre.engine.diffusers_classes import DiffusionPipeline
from daguerre.engine.jobs import EmbeddingSpec
from daguerre.errors import GenerationFailed

# Which vectors of a file go into which tokenizer and text encoder (SDXL files carry both).
_TARGETS = (("clip_l", "tokenizer", "text_encoder"), ("clip_g", "tokenizer_2", "text_encoder_2"))


def read_embedding(path: Path) -> dict[str, torch.Tensor]:
    """A textual-inversion file's vectors by text encoder, each (n, width): {"clip_l": ...} for
    SD 1.5, and "clip_g" beside it for SDXL. A1111 .pt files hold {"string_to_param": {"*": ...}}
    (or "emb_params"); .safetensors files hold "emb_params" or one tensor (SD 1.5), or clip_l and
    clip_g (SDXL). Raises ValueError for anything else."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling and safetensors raise many kinds for unreadable files
        raise ValueError(f"{path} could not be read as an embedding: {exc}") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds no embedding")
    if isinstance(state.get("clip_l"), torch.Tensor) and isinstance(state.get("clip_g"), torch.Tensor):
        found = {"clip_l": state["clip_l"], "clip_g": state["clip_g"]}
    elif isinstance(state.get("string_to_param"), dict) and isinstance(state["string_to_param"].get("*"), torch.Tensor):
        found = {"clip_l": state["string_to_param"]["*"]}
    elif isinstance(state.get("emb_params"), torch.Tensor):
        found = {"clip_l": state["emb_params"]}
    elif len(tensors := [value for value in state.values() if isinstance(value, torch.Tensor)]) == 1:
        found = {"clip_l": tensors[0]}
    else:
        raise ValueError(
            f"{path} is not a textual-inversion embedding (expected string_to_param, emb_params, or clip_l and clip_g)"
        )
    return {key: vectors.reshape(-1, vectors.shape[-1]) for key, vectors in found.items()}


def token_of(spec: EmbeddingSpec) -> str:
    # CLIP's tokenizer lower-cases text before it is split, so tokens are lower case too.
    return spec.id.lower()


def load_embeddings(pipe: DiffusionPipeline, loaded: dict[str, str], specs: tuple[EmbeddingSpec, ...]) -> None:
    """Load the embeddings of `specs` that `loaded` (token -> file) does not hold yet."""
    for spec in specs:
        token = token_of(spec)
        if loaded.get(token) == spec.path:
            continue
        if token in loaded:
            raise GenerationFailed(
                f"embedding {spec.id} was re-registered with another file while its first file is loaded; "
                "restart the server to use the new one"
            )
        vectors = read_embedding(Path(spec.path))
        for key, tokenizer, encoder in _TARGETS:
            if key in vectors and getattr(pipe, encoder, None) is not None:
                pipe.load_textual_inversion(
                    vectors[key], token=token, tokenizer=getattr(pipe, tokenizer), text_encoder=getattr(pipe, encoder)
                )
        loaded[token] = spec.path
