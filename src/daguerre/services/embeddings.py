"""Which textual-inversion embeddings a prompt names, and the prompt as the engine encodes it.

As in A1111, an installed embedding's name written in a prompt or negative prompt as a word
(`easynegative`, any case) uses it; `<embedding:name>` says so explicitly (and is refused when no
such embedding is installed for the model's family). Only embeddings of the checkpoint's family
apply: another family's name stays plain text. Each name becomes the embedding's tokens (`name`,
`name_1`, ... for one of several vectors, engine/loading/embeddings.py), inside whatever weighting
brackets surround it, so `(easynegative:1.2)` weighs every vector.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from daguerre.engine.jobs import EmbeddingSpec
from daguerre.errors import InvalidParameter
from daguerre.services.catalog import CatalogService, Kind, ModelRecord

_EXPLICIT = re.compile(r"<embedding:([^<>:]+)>", re.IGNORECASE)


def apply_embeddings(
    catalog: CatalogService, model: ModelRecord, prompts: dict[str, str]
) -> tuple[dict[str, str], tuple[EmbeddingSpec, ...]]:
    """`prompts` (field name -> text) with each named embedding written as its tokens, and the
    embeddings they use, in the order first named."""
    installed = {m.id.lower(): m for m in catalog.list(Kind.EMBEDDING) if m.family == model.family}
    used: dict[str, ModelRecord] = {}

    def tokens(name: str) -> str:
        embedding = installed[name.lower()]
        used.setdefault(embedding.id.lower(), embedding)
        token = embedding.id.lower()
        count = int(embedding.options.get("vectors", 1))
        return " ".join([token, *(f"{token}_{i}" for i in range(1, count))])

    names = sorted(installed, key=len, reverse=True)  # the longest name wins where one contains another
    bare = (
        re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, names)) + r")(?![\w-])", re.IGNORECASE) if names else None
    )
    written = {}
    for field, text in prompts.items():
        parts = []
        # Bare names are looked for outside the explicit tags, which are replaced as they are.
        last = 0
        for match in _EXPLICIT.finditer(text):
            parts.append(_expand_bare(text[last : match.start()], bare, tokens))
            name = match.group(1).strip()
            if name.lower() not in installed:
                raise InvalidParameter(
                    field,
                    f"invalid {field}: no embedding {name!r} is installed for the {model.family} family of model "
                    f"{model.id}; /api/models lists them under embeddings",
                )
            parts.append(tokens(name))
            last = match.end()
        parts.append(_expand_bare(text[last:], bare, tokens))
        written[field] = "".join(parts)
    specs = tuple(EmbeddingSpec(m.id, m.latest.version, m.latest.path, m.latest.sha256) for m in used.values())
    return written, specs


def _expand_bare(text: str, bare: re.Pattern[str] | None, tokens: Callable[[str], str]) -> str:
    if bare is None or not text:
        return text
    return bare.sub(lambda match: tokens(match.group(1)), text)
