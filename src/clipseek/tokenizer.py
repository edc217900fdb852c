"""CLIP's byte-level BPE tokenizer in plain Python + NumPy (no torch).

Token ids are identical to open_clip's ``SimpleTokenizer`` (clean='lower'): ftfy + double HTML unescape,
whitespace folded, lower-cased, CLIP's pre-tokenizer regex, byte-level BPE over the shipped merges,
``<start_of_text>`` / ``<end_of_text>`` around every text, truncation to the context length with the last
kept slot replaced by end-of-text.
"""

from __future__ import annotations

import gzip
import html
from functools import lru_cache
from importlib import resources
from typing import Iterable, Sequence

import ftfy
import numpy as np
import regex

DEFAULT_CONTEXT_LENGTH = 77
SOT_TEXT = "<start_of_text>"
EOT_TEXT = "<end_of_text>"
_N_MERGES = 49152 - 256 - 2


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte → printable-character table (avoids whitespace/control characters)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    byte_values, chars = printable[:], printable[:]
    for b in range(256):
        if b not in printable:
            byte_values.append(b)
            chars.append(256 + len(chars) - len(printable))
    return {b: chr(c) for b, c in zip(byte_values, chars)}


def clean_text(text: str) -> str:
    """CLIP's cleaning: fix mojibake, unescape HTML twice, fold whitespace, lower-case."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).lower()


def _pairs(word: Sequence[str]) -> set[tuple[str, str]]:
    return {(word[i], word[i + 1]) for i in range(len(word) - 1)}


class Tokenizer:
    """Text → CLIP token ids. ``tokenizer(texts)`` gives an int64 array ``[n, context_length]``."""

    def __init__(self, context_length: int = DEFAULT_CONTEXT_LENGTH) -> None:
        self.context_length = context_length
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        merges = _load_merges()
        vocab = list(self.byte_encoder.values())
        vocab += [v + "</w>" for v in vocab]
        vocab += ["".join(m) for m in merges]
        vocab += [SOT_TEXT, EOT_TEXT]
        self.encoder = {tok: i for i, tok in enumerate(vocab)}
        self.decoder = {i: tok for tok, i in self.encoder.items()}
        self.bpe_ranks = {m: i for i, m in enumerate(merges)}
        self.sot_token_id = self.encoder[SOT_TEXT]
        self.eot_token_id = self.encoder[EOT_TEXT]
        self.vocab_size = len(vocab)
        self._cache: dict[str, list[str]] = {SOT_TEXT: [SOT_TEXT], EOT_TEXT: [EOT_TEXT]}
        self._pattern = regex.compile(
            rf"{SOT_TEXT}|{EOT_TEXT}|'s|'t|'re|'ve|'m|'ll|'d|[\p{{L}}]+|[\p{{N}}]|[^\s\p{{L}}\p{{N}}]+",
            regex.IGNORECASE,
        )

    def bpe(self, token: str) -> list[str]:
        """Merge one pre-token (already byte-mapped) into BPE symbols, lowest merge rank first."""
        cached = self._cache.get(token)
        if cached is not None:
            return cached
        word = [*token[:-1], token[-1] + "</w>"]
        while len(word) > 1:
            pair = min(_pairs(word), key=lambda p: self.bpe_ranks.get(p, 1 << 30))
            if pair not in self.bpe_ranks:
                break
            word = _merge(word, pair)
        self._cache[token] = word
        return word

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, without start/end tokens and without truncation."""
        ids: list[int] = []
        for piece in self._pattern.findall(clean_text(text)):
            mapped = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[sym] for sym in self.bpe(mapped))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        text = "".join(self.decoder[int(i)] for i in ids)
        raw = bytearray(self.byte_decoder[c] for c in text if c in self.byte_decoder)
        return raw.decode("utf-8", errors="replace").replace("</w>", " ").strip()

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> np.ndarray:
        """Tokenize, wrap in start/end tokens, truncate and zero-pad to ``context_length``."""
        if isinstance(texts, str):
            texts = [texts]
        length = context_length or self.context_length
        out = np.zeros((len(texts), length), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = [self.sot_token_id, *self.encode(text), self.eot_token_id]
            if len(ids) > length:
                ids = ids[:length]
                ids[-1] = self.eot_token_id
            out[row, : len(ids)] = ids
        return out

    def lengths(self, tokens: np.ndarray) -> np.ndarray:
        """Per row, the number of tokens up to and including end-of-text."""
        return np.asarray((tokens == self.eot_token_id).argmax(axis=1) + 1, dtype=np.int64)


def _merge(word: list[str], pair: tuple[str, str]) -> list[str]:
    first, second = pair
    merged: list[str] = []
    i = 0
    while i < len(word):
        if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
            merged.append(first + second)
            i += 2
        else:
            merged.append(word[i])
            i += 1
    return merged


@lru_cache(maxsize=1)
def _load_merges() -> list[tuple[str, str]]:
    data = resources.files("clipseek").joinpath("data/bpe_simple_vocab_16e6.txt.gz").read_bytes()
    lines = gzip.decompress(data).decode("utf-8").split("\n")[1 : _N_MERGES + 1]
    return [(a, b) for a, b in (line.split() for line in lines)]


@lru_cache(maxsize=4)
def get_tokenizer(context_length: int = DEFAULT_CONTEXT_LENGTH) -> Tokenizer:
    return Tokenizer(context_length)
