"""A1111's prompt weighting syntax.

`(text)` multiplies attention by 1.1, `[text]` divides by 1.1, `(text:1.3)` sets a factor; they
nest and multiply. `\\(`, `\\)`, `\\[`, `\\]` and `\\\\` are literal. An unclosed bracket applies to
the rest of the prompt, as in A1111. `BREAK` (upper case, alone) starts a new 75-token chunk.

Written here rather than taken from a library: compel, the maintained prompt-weighting library
for diffusers, implements its own syntax (`word++`, `(word)1.3`), not A1111's, and clients of the
hosted API send A1111 prompts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

ROUND = 1.1
SQUARE = 1 / 1.1

_TOKENS = re.compile(
    r"""
      \\[()\[\]\\]            # escaped bracket or backslash
    | \\                      # a lone backslash
    | \( | \[                 # openers
    | :\s*([+-]?[.\d]+)\s*\)  # explicit weight closing a round bracket
    | \) | \]                 # closers
    | [^\\()\[\]:]+           # plain text
    | :                       # a colon that is not a weight
    """,
    re.VERBOSE,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*")


@dataclass(frozen=True)
class Fragment:
    text: str
    weight: float


@dataclass(frozen=True)
class Break:
    """Marks where the prompt said BREAK."""


def parse_prompt(prompt: str) -> list[Fragment | Break]:
    pieces: list[list[Any]] = []  # [text, weight] or [Break(), None]
    round_open: list[int] = []
    square_open: list[int] = []

    def scale_from(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            if piece[1] is not None:
                piece[1] *= factor

    for match in _TOKENS.finditer(prompt):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            pieces.append([token[1:] if len(token) > 1 else token, 1.0])
        elif token == "(":
            round_open.append(len(pieces))
        elif token == "[":
            square_open.append(len(pieces))
        elif weight is not None and round_open and _is_number(weight):
            scale_from(round_open.pop(), float(weight))
        elif token == ")" and round_open:
            scale_from(round_open.pop(), ROUND)
        elif token == "]" and square_open:
            scale_from(square_open.pop(), SQUARE)
        else:
            for i, part in enumerate(_BREAK.split(token)):
                if i:
                    pieces.append([Break(), None])
                if part:
                    pieces.append([part, 1.0])
    for start in round_open:
        scale_from(start, ROUND)
    for start in square_open:
        scale_from(start, SQUARE)

    merged: list[Fragment | Break] = []
    for text, weight in pieces:
        if isinstance(text, Break):
            merged.append(text)
        elif merged and isinstance(merged[-1], Fragment) and merged[-1].weight == weight:
            merged[-1] = Fragment(merged[-1].text + text, weight)
        else:
            merged.append(Fragment(text, weight))
    return merged or [Fragment("", 1.0)]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
