"""Torch-free tokenizers that give the same token ids as open_clip's, for the exported text tower.

:class:`ClipBpeTokenizer` is open_clip's ``SimpleTokenizer`` (CLIP BPE) on ``regex``; :class:`HFTokenizersTokenizer`
is its ``HFTokenizer``/``SigLipTokenizer`` on the ``tokenizers`` library. Neither imports torch, open_clip or
transformers; the export (:mod:`retrieval.search.text_tower_export`) checks them against the encoder's tokenizer.
"""

from __future__ import annotations

import gzip
import html
import os
import string
from collections.abc import Callable, Sequence

import numpy as np

_BPE_CACHE_MAX = 100_000


class BpeMergesError(ValueError):
    """The BPE merges file does not hold the merges its sidecar entry promises."""


def _bytes_to_unicode() -> dict[int, str]:
    """open_clip's reversible byte -> printable unicode map (CLIP BPE)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _is_plain(text: str) -> bool:
    """Printable ASCII without ``&``: ``ftfy.fix_text`` and ``html.unescape`` leave such text unchanged
    (every ftfy fixer needs non-ASCII, control characters, line breaks or an HTML entity), so importing
    ftfy (~0.05-0.08 s of a cold query) can be skipped. Checked against ftfy in tests/test_text_tower.py."""
    return text.isascii() and text.isprintable() and "&" not in text


def _basic_clean(text: str) -> str:
    if _is_plain(text):
        return text.strip()
    import ftfy  # lazy: ~0.05-0.08 s, only for text that may need fixing

    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return text.strip()


def _whitespace_clean(text: str) -> str:
    return " ".join(text.split()).strip()


_PUNCTUATION = str.maketrans("", "", string.punctuation)


def _canonicalize(text: str) -> str:
    text = text.replace("_", " ").translate(_PUNCTUATION).lower()
    return " ".join(text.split()).strip()


CLEAN_FNS: dict[str, Callable[[str], str]] = {
    "lower": lambda t: _whitespace_clean(_basic_clean(t)).lower(),
    "whitespace": lambda t: _whitespace_clean(_basic_clean(t)),
    "canonicalize": lambda t: _canonicalize(_basic_clean(t)),
}


class ClipBpeTokenizer:
    """open_clip's ``SimpleTokenizer`` without torch: same cleaning, BPE, SOT/EOT and truncation (EOT kept)."""

    def __init__(self, merges_path: str | os.PathLike[str], n_merges: int, special_tokens: Sequence[str],
                 context_length: int, clean: str = "lower") -> None:
        import regex

        with gzip.open(merges_path, "rt", encoding="utf-8") as fh:
            merges = fh.read().split("\n")[1:1 + n_merges]  # "first second" per line
        # one space per merge line, checked in C (the file's sha256 is checked by the loader as well)
        if len(merges) != n_merges or "\n".join(merges).count(" ") != n_merges or "" in merges:
            raise BpeMergesError(f"{merges_path}: expected {n_merges} BPE merges")
        self.byte_encoder = _bytes_to_unicode()
        # The same tables as SimpleTokenizer (vocab = bytes, bytes + </w>, merges joined, special tokens; a later
        # duplicate wins as in dict(zip(vocab, ...))), keyed by the merge lines themselves instead of tuples:
        # building them takes ~0.02 s instead of ~0.08 s of a cold query.
        base = list(self.byte_encoder.values())
        base += [v + "</w>" for v in base]
        self.encoder: dict[str, int] = dict(zip(base, range(len(base))))
        self.encoder.update(zip([m.replace(" ", "") for m in merges], range(len(base), len(base) + n_merges)))
        self.encoder.update(zip(special_tokens, range(len(base) + n_merges, len(base) + n_merges + len(special_tokens))))
        self.bpe_ranks: dict[str, int] = dict(zip(merges, range(n_merges)))
        self.special_tokens = list(special_tokens)
        self.cache: dict[str, str] = {t: t for t in special_tokens}
        self.pat = regex.compile(
            "|".join(special_tokens) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )
        self.sot_token_id = self.encoder[special_tokens[0]]
        self.eot_token_id = self.encoder[special_tokens[1]]
        self.context_length = int(context_length)
        self.clean_fn = CLEAN_FNS[clean]

    def bpe(self, token: str) -> str:
        if token in self.cache:
            return self.cache[token]
        word: tuple[str, ...] = tuple(token[:-1]) + (token[-1] + "</w>",)
        pairs = set(zip(word, word[1:]))
        if not pairs:
            return token + "</w>"
        ranks = self.bpe_ranks
        inf = float("inf")
        while True:
            bigram = min(pairs, key=lambda pair: ranks.get(pair[0] + " " + pair[1], inf))
            if bigram[0] + " " + bigram[1] not in ranks:
                break
            first, second = bigram
            new_word: list[str] = []
            i = 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    new_word.extend(word[i:])
                    break
                new_word.extend(word[i:j])
                i = j
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = tuple(new_word)
            if len(word) == 1:
                break
            pairs = set(zip(word, word[1:]))
        out = " ".join(word)
        if len(self.cache) > _BPE_CACHE_MAX:  # a long-running server sees unbounded distinct words
            self.cache = {t: t for t in self.special_tokens}
        self.cache[token] = out
        return out

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for token in self.pat.findall(self.clean_fn(text)):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(token).split(" "))
        return ids

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.context_length), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = [self.sot_token_id, *self.encode(text), self.eot_token_id]
            if len(ids) > self.context_length:
                ids = ids[: self.context_length]
                ids[-1] = self.eot_token_id
            out[row, : len(ids)] = ids
        return out


class HFTokenizersTokenizer:
    """open_clip's ``HFTokenizer``/``SigLipTokenizer`` on the ``tokenizers`` library (no transformers, no torch)."""

    def __init__(self, path: str | os.PathLike[str], context_length: int, clean: str, pad_id: int,
                 pad_token: str, padding_side: str = "right", truncation_side: str = "right",
                 strip_token_id: int | None = None) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(path))
        self.tokenizer.enable_truncation(max_length=int(context_length), direction=truncation_side)
        self.tokenizer.enable_padding(length=int(context_length), pad_id=int(pad_id), pad_token=pad_token,
                                      direction=padding_side)
        self.context_length = int(context_length)
        self.clean_fn = CLEAN_FNS[clean]
        self.strip_token_id = strip_token_id

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.context_length), dtype=np.int64)
        encoded = self.tokenizer.encode_batch([self.clean_fn(t) for t in texts])
        ids = np.asarray([e.ids for e in encoded], dtype=np.int64)
        if self.strip_token_id is not None:
            ids[ids == self.strip_token_id] = 0
        return ids
