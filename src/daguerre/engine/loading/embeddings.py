"""Textual-inversion embeddings on a resident pipeline: each loaded once into the tokenizer and text
encoder (both of them for SDXL) as new tokens, and kept; a prompt uses one by carrying its tokens.

diffusers' `load_textual_inversion` adds the tokens (`name`, `name_1`, ... for a multi-vector
embedding) and their vectors. Other tokens' vectors are untouched, so a prompt that names no
embedding encodes exactly as before. The services write an embedding named in a prompt as its
tokens (services/embeddings.py), since daguerre encodes prompts itself (A1111 weighting), not
through diffusers' prompt conversion.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from daguerre.engine.diffusers_classes import DiffusionPipeline
from daguerre.engine.jobs import EmbeddingSpec
from daguerre.engine.loading.model_files import LocalFile, in_place

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


@dataclass(frozen=True)
class LoadedEmbedding:
    """What a resident pipeline holds under an embedding's token."""

    version: str
    path: str
    tokens: tuple[str, ...]  # the token, then token_1, token_2, ... for each further vector

    def serves(self, spec: EmbeddingSpec) -> bool:
        return (self.version, self.path) == (spec.version, spec.path)


def load_embeddings(
    pipe: DiffusionPipeline,
    loaded: dict[str, LoadedEmbedding],
    specs: tuple[EmbeddingSpec, ...],
    local: LocalFile = in_place,
) -> None:
    """Load the embeddings of `specs` that `loaded` (token -> what it holds) does not hold yet. One
    registered again (another version) replaces the tokens of the version loaded before, so the
    new file takes effect without a restart. `local` finds the files."""
    for spec in specs:
        token = token_of(spec)
        held = loaded.get(token)
        if held is not None and held.serves(spec):
            continue
        vectors = read_embedding(
            local(spec.path, spec.sha256)
        )  # read first: an unreadable file leaves the old one loaded
        targets = [
            (vectors[key], getattr(pipe, tokenizer), getattr(pipe, encoder))
            for key, tokenizer, encoder in _TARGETS
            if key in vectors and getattr(pipe, encoder, None) is not None
        ]
        if held is not None:
            for _, tokenizer, encoder in targets:
                if token in tokenizer.get_vocab():
                    pipe.unload_textual_inversion(list(held.tokens), tokenizer=tokenizer, text_encoder=encoder)
            del loaded[token]
        for embedding, tokenizer, encoder in targets:
            pipe.load_textual_inversion(embedding, token=token, tokenizer=tokenizer, text_encoder=encoder)
        count = max(embedding.shape[0] for embedding, _, _ in targets)
        loaded[token] = LoadedEmbedding(spec.version, spec.path, (token, *(f"{token}_{i}" for i in range(1, count))))


def holds(loaded: dict[str, LoadedEmbedding], specs: tuple[EmbeddingSpec, ...]) -> bool:
    """Whether every embedding of `specs` is loaded as that version."""
    return all((held := loaded.get(token_of(spec))) is not None and held.serves(spec) for spec in specs)
