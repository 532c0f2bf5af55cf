"""The A1111 prompt syntax and the chunked, weighted encoding."""

from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionPipeline

from daguerre.engine.prompts.encoding import CHUNK, encode_prompt_pair, weighted_chunks
from daguerre.engine.prompts.syntax import Break, Fragment, parse_prompt


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a cat", [("a cat", 1.0)]),
        ("a (cat) on a mat", [("a ", 1.0), ("cat", 1.1), (" on a mat", 1.0)]),
        ("((cat))", [("cat", 1.1 * 1.1)]),
        ("[cat]", [("cat", 1 / 1.1)]),
        ("(cat:1.3) and (dog:0.5)", [("cat", 1.3), (" and ", 1.0), ("dog", 0.5)]),
        ("((cat:1.5))", [("cat", 1.5 * 1.1)]),
        (r"\(cat\) \[dog\]", [("(cat) [dog]", 1.0)]),
        (r"a \\ b", [("a \\ b", 1.0)]),
        ("open (unclosed", [("open ", 1.0), ("unclosed", 1.1)]),
        ("stray ) and ]", [("stray ) and ]", 1.0)]),
        ("ratio 16:9", [("ratio 16:9", 1.0)]),
        ("(a:x)", [("a:x", 1.1)]),
        ("", [("", 1.0)]),
    ],
)
def test_a1111_weighting_syntax(prompt: str, expected: list[tuple[str, float]]) -> None:
    parsed = parse_prompt(prompt)
    assert [(f.text, pytest.approx(f.weight)) for f in parsed] == expected


def test_break_keyword() -> None:
    assert parse_prompt("a cat BREAK a dog") == [Fragment("a cat", 1.0), Break(), Fragment("a dog", 1.0)]
    assert parse_prompt("BREAKFAST") == [Fragment("BREAKFAST", 1.0)]


@pytest.fixture(scope="module")
def pipe(tiny_sd15) -> StableDiffusionPipeline:
    return StableDiffusionPipeline.from_pretrained(tiny_sd15, local_files_only=True)


def test_plain_prompt_encodes_exactly_like_diffusers(pipe: StableDiffusionPipeline) -> None:
    ours, ours_negative = encode_prompt_pair(
        "a photo of a cat", "blurry", pipe.tokenizer, pipe.text_encoder, pipe.device
    )
    theirs, theirs_negative = pipe.encode_prompt("a photo of a cat", "cpu", 1, True, "blurry")
    assert torch.equal(ours, theirs)
    assert torch.equal(ours_negative, theirs_negative)


def test_long_prompts_are_chunked_and_padded_to_the_same_length(pipe: StableDiffusionPipeline) -> None:
    long_prompt = " ".join(["cat"] * 200)
    chunks = weighted_chunks(pipe.tokenizer, long_prompt)
    assert [len(c.tokens) for c in chunks] == [CHUNK, CHUNK, 50]
    positive, negative = encode_prompt_pair(long_prompt, "", pipe.tokenizer, pipe.text_encoder, pipe.device)
    assert positive.shape == negative.shape == (1, 3 * 77, pipe.text_encoder.config.hidden_size)


def test_chunks_break_at_a_recent_comma_and_at_break(pipe: StableDiffusionPipeline) -> None:
    words = " ".join(["cat"] * 70) + ", " + " ".join(["dog"] * 10)
    chunks = weighted_chunks(pipe.tokenizer, words)
    assert [len(c.tokens) for c in chunks] == [71, 10]  # 70 cats and the comma, then the dogs
    assert [len(c.tokens) for c in weighted_chunks(pipe.tokenizer, "a cat BREAK a dog")] == [2, 2]
    commas = ", ".join(["lowres"] * 150)
    assert all(len(c.tokens) <= CHUNK for c in weighted_chunks(pipe.tokenizer, commas))


def test_weights_scale_token_embeddings(pipe: StableDiffusionPipeline) -> None:
    plain, _ = encode_prompt_pair("a cat", "", pipe.tokenizer, pipe.text_encoder, pipe.device)
    weighted, _ = encode_prompt_pair("a (cat:1.5)", "", pipe.tokenizer, pipe.text_encoder, pipe.device)
    assert weighted.shape == plain.shape
    assert not torch.allclose(weighted, plain)
    # A1111 restores each chunk's mean after weighting.
    assert torch.allclose(weighted.mean(), plain.mean(), atol=1e-5)
