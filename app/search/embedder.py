"""Embedders: text → unit vector of 256 floats.

``HashingEmbedder`` (the default) needs nothing: words and character trigrams are hashed
(blake2b) into 256 signed buckets and the vector is L2-normalised. Deterministic, offline,
microseconds per text. It captures shared words and spellings — "invoice" finds "invoices"
and "invoicing" — not meaning: "car" does not find "automobile".

``SentenceTransformerEmbedder`` (EMBEDDER=sentence-transformers, with the package and a
model available locally) gives semantic neighbours; its vectors are projected to 256
dimensions by fixed hashing so the column and index stay the same. Re-embed everything
(`app search reindex --all`) after switching.
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import Protocol

DIMENSIONS = 256
_WORD = re.compile(r"\w+", re.UNICODE)


class Embedder(Protocol):
    def embed(self, text: str) -> list[float]: ...


class HashingEmbedder:
    def embed(self, text: str) -> list[float]:
        vector = [0.0] * DIMENSIONS
        words = _WORD.findall(text.lower())
        features = [f"w:{w}" for w in words]
        for word in words:
            padded = f" {word} "
            features += [f"c:{padded[i : i + 3]}" for i in range(len(padded) - 2)]
        for feature in features:
            digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
            bucket = int.from_bytes(digest[:4], "little") % DIMENSIONS
            sign = 1.0 if digest[4] & 1 else -1.0
            weight = 2.0 if feature.startswith("w:") else 1.0
            vector[bucket] += sign * weight
        norm = math.sqrt(sum(v * v for v in vector))
        if norm == 0:
            vector[0] = 1.0  # empty text: a fixed, valid unit vector
            return vector
        return [v / norm for v in vector]


class SentenceTransformerEmbedder:  # pragma: no cover - optional extra, not installed in CI
    def __init__(self, model: str) -> None:
        from sentence_transformers import SentenceTransformer

        self._model = SentenceTransformer(model)

    def embed(self, text: str) -> list[float]:
        raw = [float(x) for x in self._model.encode(text)]
        vector = [0.0] * DIMENSIONS
        for index, value in enumerate(raw):
            vector[index % DIMENSIONS] += value
        norm = math.sqrt(sum(v * v for v in vector)) or 1.0
        return [v / norm for v in vector]


def create_embedder(kind: str, model: str) -> Embedder:
    if kind == "sentence-transformers":
        return SentenceTransformerEmbedder(model)
    return HashingEmbedder()
