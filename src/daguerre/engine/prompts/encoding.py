"""Prompt embeddings with A1111 weighting and prompts longer than CLIP's 77 tokens.

As in A1111: the weighted tokens are cut into chunks of 75 (at the last comma within the final
20 tokens when there is one, and at BREAK), each chunk is wrapped in BOS/EOS, padded to 77 and
encoded on its own, each token's embedding is scaled by its weight and the chunk rescaled to keep
its original mean, and the chunks are concatenated. The positive and negative prompts are padded
to the same number of chunks, since classifier-free guidance batches them together.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import CLIPTextModel, CLIPTokenizer

from daguerre.engine.prompts.syntax import Break, Fragment, parse_prompt
from daguerre.errors import InvalidParameter

CHUNK = 75
COMMA_BACKTRACK = 20


@dataclass
class Chunk:
    tokens: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)


def weighted_chunks(tokenizer: CLIPTokenizer, prompt: str) -> list[Chunk]:
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    chunks = [Chunk()]
    last_comma = -1

    def close_chunk() -> None:
        nonlocal last_comma
        chunks.append(Chunk())
        last_comma = -1

    for piece in parse_prompt(prompt):
        if isinstance(piece, Break):
            close_chunk()
            continue
        assert isinstance(piece, Fragment)
        ids = tokenizer(piece.text, add_special_tokens=False, truncation=False).input_ids if piece.text else []
        for token in ids:
            current = chunks[-1]
            if len(current.tokens) == CHUNK:
                if last_comma >= 0 and CHUNK - last_comma <= COMMA_BACKTRACK:
                    # Move the words after the last comma to the next chunk, keeping them together.
                    carry = Chunk(current.tokens[last_comma + 1 :], current.weights[last_comma + 1 :])
                    del current.tokens[last_comma + 1 :], current.weights[last_comma + 1 :]
                    chunks.append(carry)
                    last_comma = -1
                else:
                    close_chunk()
                current = chunks[-1]
            if token == comma:
                last_comma = len(current.tokens)
            current.tokens.append(token)
            current.weights.append(piece.weight)
    if len(chunks) > 1 and not chunks[-1].tokens:
        chunks.pop()
    return chunks


def chunk_ids(chunks: list[Chunk], tokenizer: CLIPTokenizer) -> tuple[list[list[int]], list[list[float]]]:
    """Each chunk's 77 token ids (BOS, tokens, EOS, padding) and their weights."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    ids, weights = [], []
    for chunk in chunks:
        padding = CHUNK - len(chunk.tokens)
        ids.append([bos, *chunk.tokens, eos] + [pad] * padding)
        weights.append([1.0, *chunk.weights, 1.0] + [1.0] * padding)
    return ids, weights


def apply_weights(hidden: torch.Tensor, weights: list[list[float]]) -> torch.Tensor:
    """Scale each token's embedding by its weight, keeping each chunk's mean; (chunks, 77, dim)
    becomes (1, 77 x chunks, dim)."""
    scale = torch.tensor(weights, device=hidden.device, dtype=hidden.dtype).unsqueeze(-1)
    if not torch.all(scale == 1):
        hidden = _restore_mean(hidden, hidden * scale)
    return hidden.reshape(1, -1, hidden.shape[-1])


@torch.no_grad()
def encode_chunks(
    chunks: list[Chunk],
    tokenizer: CLIPTokenizer,
    text_encoder: CLIPTextModel,
    device: torch.device,
    clip_skip: int = 1,
) -> torch.Tensor:
    """(1, 77 x chunks, dim). With clip_skip n > 1, as A1111: the hidden state n layers from the
    end, through the encoder's final layer norm (which the last layer's output already went through)."""
    ids, weights = chunk_ids(chunks, tokenizer)
    output = text_encoder(torch.tensor(ids, device=device), output_hidden_states=clip_skip > 1)
    hidden: torch.Tensor = output[0]  # (chunks, 77, dim), last hidden state
    if clip_skip > 1:
        # transformers >= 5.6 flattened CLIPTextModel; older versions keep the `text_model` level.
        model = getattr(text_encoder, "text_model", text_encoder)
        hidden = model.final_layer_norm(output.hidden_states[-clip_skip])
    return apply_weights(hidden, weights)


# The share of a chunk's mean magnitude its mean must reach for A1111's mean restoration to apply.
MEAN_RESTORE_MIN = 1e-2


def _restore_mean(hidden: torch.Tensor, weighted: torch.Tensor) -> torch.Tensor:
    """A1111 rescales each weighted chunk so that its mean matches the unweighted one:
    weighted * (mean before / mean after). That ratio is only meaningful when both means are a
    sizeable share of the values' magnitude. A text encoder whose final layer norm centres its
    output gives means near zero (the demo's: about 1e-8 against a mean magnitude of 0.8), and the
    ratio of two near-zero means is noise, here large enough to overflow to inf and turn the image
    black. Such chunks keep their weighted values unrescaled, which is how other weighting schemes
    (compel) always treat them; elsewhere A1111's result is unchanged."""
    dims = (1, 2)
    before = hidden.float().mean(dim=dims, keepdim=True)
    after = weighted.float().mean(dim=dims, keepdim=True)
    magnitude = weighted.float().abs().mean(dim=dims, keepdim=True)
    ratio = before / after
    sound = (
        torch.isfinite(ratio)
        & (before.abs() >= MEAN_RESTORE_MIN * magnitude)
        & (after.abs() >= MEAN_RESTORE_MIN * magnitude)
    )
    return torch.where(sound, weighted * ratio.to(weighted.dtype), weighted)


def check_prompt_length(tokenizer: CLIPTokenizer, prompt: str, negative_prompt: str, max_chunks: int) -> None:
    """Refuse a prompt of more than `max_chunks` CLIP chunks before anything is encoded: the text
    encoder's work, and every denoising step's cross-attention, grow with the chunk count, which
    the price does not follow. The character limit (protocol) bounds the text; this bounds what
    the tokenizer makes of it (a prompt of emoji or rare words takes several tokens a character)."""
    for name, text in (("prompt", prompt), ("negative_prompt", negative_prompt)):
        count = len(weighted_chunks(tokenizer, text))
        if count > max_chunks:
            raise InvalidParameter(
                name,
                f"invalid {name}: {count} chunks of {CHUNK} CLIP tokens, more than this server's limit of "
                f"{max_chunks} (setting max_prompt_chunks)",
            )


def chunk_pair(tokenizer: CLIPTokenizer, prompt: str, negative_prompt: str) -> tuple[list[Chunk], list[Chunk]]:
    """Both prompts' chunks, as many in each: classifier-free guidance batches them together."""
    positive = weighted_chunks(tokenizer, prompt)
    negative = weighted_chunks(tokenizer, negative_prompt)
    count = max(len(positive), len(negative))
    positive += [Chunk() for _ in range(count - len(positive))]
    negative += [Chunk() for _ in range(count - len(negative))]
    return positive, negative


def encode_prompt_pair(
    prompt: str,
    negative_prompt: str,
    tokenizer: CLIPTokenizer,
    text_encoder: CLIPTextModel,
    device: torch.device,
    clip_skip: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    positive, negative = chunk_pair(tokenizer, prompt, negative_prompt)
    return (
        encode_chunks(positive, tokenizer, text_encoder, device, clip_skip),
        encode_chunks(negative, tokenizer, text_encoder, device, clip_skip),
    )
