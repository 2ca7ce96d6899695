"""Language-agnostic text features shared by the online and the offline (ONNX) text models.

Customer-care messages and reviews arrive in English and in Chinese, so nothing here
needs a tokenizer, a stemmer or a vocabulary file:

* :func:`tokenize` lower-cases (NFKC), maps every digit to ``0``, splits Latin-script
  text into words and punctuation, and turns every CJK character into a token of its
  own (a Chinese "word" is then just a character; bigrams and trigrams of tokens
  recover most of the words a segmenter would find).
* :func:`bow_features` is the bag of n-grams the intent and sentiment models read:
  word unigrams, bigrams and trigrams (with sentence boundaries), skip pairs (two
  words one or two apart) and character 2-5-grams inside word boundaries.
* :func:`subwords` is the fastText-style view of one token (the word plus its
  character 3-5-grams) used by the offline convolutional model.
* Every feature string is hashed with CRC32 (stable across processes, unlike Python's
  salted ``hash``) into :data:`N_BUCKETS` ids; :func:`encode_bow` and
  :func:`encode_subwords` pad a batch of texts into the integer arrays that the ONNX
  graph takes as input, so serving needs numpy and onnxruntime only.
* :func:`detect_language` tells Chinese from English by Unicode script counts, which
  is all the sentiment router needs.

Examples
--------
>>> tokenize("My card #4532 hasn't arrived!")
['my', 'card', '#', '0000', "hasn't", 'arrived', '!']
>>> tokenize("送餐很快")
['送', '餐', '很', '快']
>>> [f for f in bow_features("top up") if f.startswith(("w:", "b:"))]
['w:top', 'w:up', 'b:<s> top', 'b:top up', 'b:up </s>']
>>> detect_language("送餐很快 味道不错"), detect_language("Fast delivery, tasty food")
('zh', 'en')
>>> ids, counts = encode_bow(["top up failed", "hi"])
>>> ids.shape[0], ids.dtype.name, counts.dtype.name, float(counts[1].sum()) > 0
(2, 'int64', 'float32', True)
"""

from __future__ import annotations

import itertools
import re
import unicodedata
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

#: Hash space of every text feature id (2**20: collisions are rare at ~10**5 features).
N_BUCKETS = 2**20

_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # Han ideographs (extension A, unified, compatibility)
_KANA_HANGUL = "\u3040-\u30ff\uac00-\ud7af"
_CJK_RE = re.compile(f"([{_CJK}{_KANA_HANGUL}])")
_HAN_RE = re.compile(f"[{_CJK}]")
_LATIN_RE = re.compile(r"[a-zA-Z\u00c0-\u024f]")
_LETTER_RE = re.compile(r"[^\W\d_]")
_TOKEN_RE = re.compile(r"[^\W_]+(?:'[^\W_]+)*|[^\w\s]|_")
_DIGIT_RE = re.compile(r"\d")


def normalize(text: str) -> str:
    """NFKC, lower case, every digit replaced by ``0``.

    >>> normalize("No.5 Café 123")
    'no.0 café 000'
    """
    return _DIGIT_RE.sub("0", unicodedata.normalize("NFKC", text).lower())


def tokenize(text: str) -> list[str]:
    """Words, punctuation marks and single CJK characters of ``normalize(text)``."""
    return _TOKEN_RE.findall(_CJK_RE.sub(r" \1 ", normalize(text)))


def _char_ngrams(word: str, lo: int, hi: int, pad: str = " ") -> list[str]:
    p = f"{pad}{word}{pad}" if len(pad) == 1 else f"{pad[0]}{word}{pad[1]}"
    return [p[i : i + n] for n in range(lo, hi + 1) for i in range(len(p) - n + 1)]


def bow_features(
    text: str, skip: int = 3, trigrams: bool = True, char_min: int = 2, char_max: int = 5
) -> list[str]:
    """The bag-of-n-grams features of ``text`` (repeats kept: they are term counts).

    Word features carry a prefix (``w:`` unigram, ``b:`` bigram, ``t:`` trigram,
    ``k:`` skip pair); character n-grams of words of two or more characters are
    padded with a space on each side, like scikit-learn's ``char_wb``.

    >>> sorted(f for f in bow_features("hi", skip=0, trigrams=False))
    [' h', ' hi', ' hi ', 'b:<s> hi', 'b:hi </s>', 'hi', 'hi ', 'i ', 'w:hi']
    """
    words = tokenize(text)
    out = [f"w:{w}" for w in words]
    seq = ["<s>", *words, "</s>"]
    out += [f"b:{a} {b}" for a, b in itertools.pairwise(seq)]
    if trigrams:
        out += [f"t:{seq[i]} {seq[i + 1]} {seq[i + 2]}" for i in range(len(seq) - 2)]
    for i in range(len(words)):
        for j in range(i + 2, min(len(words), i + skip + 1)):
            out.append(f"k:{words[i]} {words[j]}")
    if char_max >= char_min:
        for w in words:
            if len(w) > 1 and w[0].isalnum():
                out += _char_ngrams(w, char_min, char_max)
    return out


def subwords(token: str, lo: int = 3, hi: int = 5) -> list[str]:
    """fastText-style pieces of one token: the token itself and its ``<token>`` char n-grams.

    >>> subwords("card")
    ['w:card', '<ca', 'car', 'ard', 'rd>', '<car', 'card', 'ard>', '<card', 'card>']
    """
    return [f"w:{token}", *_char_ngrams(token, lo, hi, pad="<>")] if len(token) > 1 else [f"w:{token}"]


def bucket(feature: str, n_buckets: int = N_BUCKETS) -> int:
    """Stable hash id of one feature string in ``[0, n_buckets)`` (``n_buckets`` a power of two)."""
    return zlib.crc32(feature.encode("utf-8")) & (n_buckets - 1)


def hashed_counts(features: Iterable[str], n_buckets: int = N_BUCKETS) -> dict[int, int]:
    """Term counts of ``features`` keyed by their bucket id."""
    return dict(Counter(bucket(f, n_buckets) for f in features))


def bow_counts(text: str, n_buckets: int = N_BUCKETS, **feature_kw: int | bool) -> dict[int, int]:
    """Hashed term counts of :func:`bow_features` (``feature_kw`` goes to it)."""
    return hashed_counts(bow_features(text, **feature_kw), n_buckets)  # type: ignore[arg-type]


def subword_ids(text: str, max_tokens: int = 48, n_buckets: int = N_BUCKETS) -> list[list[int]]:
    """Hashed :func:`subwords` of each of the first ``max_tokens`` tokens (``<empty>`` if none)."""
    return [
        [bucket(s, n_buckets) for s in subwords(tok)] for tok in (tokenize(text)[:max_tokens] or ["<empty>"])
    ]


def pad_bow(rows: Sequence[dict[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Pad per-text ``{bucket: count}`` dicts into ``(ids int64 [B, L], counts float32 [B, L])``.

    Padding has count 0, so it carries no weight whatever its id.
    """
    width = max((len(r) for r in rows), default=0) or 1
    ids = np.zeros((len(rows), width), dtype=np.int64)
    counts = np.zeros((len(rows), width), dtype=np.float32)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = list(r.keys())
        counts[i, : len(r)] = list(r.values())
    return ids, counts


def pad_subwords(docs: Sequence[list[list[int]]]) -> tuple[np.ndarray, np.ndarray]:
    """Pad per-text token subword ids into ``(ids int64 [B, T, S], mask float32 [B, T, S])``."""
    t_max = max((len(d) for d in docs), default=1)
    s_max = max((len(tok) for d in docs for tok in d), default=1)
    ids = np.zeros((len(docs), t_max, s_max), dtype=np.int64)
    mask = np.zeros((len(docs), t_max, s_max), dtype=np.float32)
    for i, d in enumerate(docs):
        for j, tok in enumerate(d):
            ids[i, j, : len(tok)] = tok
            mask[i, j, : len(tok)] = 1.0
    return ids, mask


def encode_bow(
    texts: Sequence[str], n_buckets: int = N_BUCKETS, **feature_kw: int | bool
) -> tuple[np.ndarray, np.ndarray]:
    """Padded ``(ids int64 [B, L], counts float32 [B, L])`` of the hashed :func:`bow_features`."""
    return pad_bow([bow_counts(t, n_buckets, **feature_kw) for t in texts])


def encode_subwords(
    texts: Sequence[str], max_tokens: int = 48, n_buckets: int = N_BUCKETS
) -> tuple[np.ndarray, np.ndarray]:
    """Padded ``(ids int64 [B, T, S], mask float32 [B, T, S])`` of each token's hashed :func:`subwords`.

    At most ``max_tokens`` tokens per text are kept; an empty text becomes one
    ``<empty>`` token so every row has at least one position.
    """
    return pad_subwords([subword_ids(t, max_tokens, n_buckets) for t in texts])


def detect_language(text: str) -> str:
    """``"zh"``, ``"en"``, ``"other"`` (letters of another script) or ``"unknown"`` (no letters).

    Counts Han ideographs against Latin letters. A Han character carries about a
    word, a Latin letter a fifth of one, so Chinese wins when it has at least a
    third as many characters as there are Latin letters ("我想买iPhone" is Chinese,
    "I ordered 北京烤鸭 twice" is English).

    >>> [detect_language(t) for t in ("我想买iPhone", "I ordered 北京烤鸭 twice", "Привет", "123 !!")]
    ['zh', 'en', 'other', 'unknown']
    """
    han = len(_HAN_RE.findall(text))
    latin = len(_LATIN_RE.findall(text))
    if han and 3 * han >= latin:
        return "zh"
    if latin:
        return "en"
    return "other" if _LETTER_RE.search(text) else "unknown"
