"""Near-duplicate images: a perceptual fingerprint per image, a pairwise test, and grouping.

The same photo saved as a file, embedded in a PDF, and re-saved at another size or JPEG quality has different
bytes but the same picture. A fingerprint keeps what survives those copies: a 64-bit DCT hash (pHash) and a
16x16 grey thumbnail with a 4x4 colour summary. Two images are duplicates only when all of these agree:

- the pHash Hamming distance is small (a cheap filter: it alone is not enough; two different handwritten
  digits scaled up to 64 px are 2 bits apart, two pages of a manual 4 bits apart);
- the grey thumbnails differ by a few grey levels (RMS), which separates different digits and faces;
- the grey thumbnails correlate almost perfectly, which separates pages of text whose thumbnails are all
  "white with grey lines", so near in grey levels but not in structure;
- the colour summaries and aspect ratios agree (a recoloured chart or a stretched copy is another picture);
- and, when both have embedding vectors, their cosine is high.

Images smaller than MIN_SIDE on their shorter side get no fingerprint: their copies stop agreeing. A blank
image (a black frame, an empty page) gets one but never matches: a flat thumbnail correlates with nothing.
The thresholds and the size limit come from bench/duplicates.py, which measures them on real data (see the
README section "Near-duplicate images").
"""

from __future__ import annotations

import base64
import functools
import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal, TypeVar

from PIL import Image

if TYPE_CHECKING:
    import numpy as np

FINGERPRINT_VERSION = "v1"
FINGERPRINT_KEY = "fingerprint"  # where ingest keeps an image item's fingerprint text in its meta
MIN_SIDE = 16  # pixels on the shorter side; below this, thumbnails of one photo stop agreeing
_WORK_SIDE = 64
_HASH_GRID = 32  # pHash: DCT of the 32x32 grey picture, its 8x8 lowest frequencies
_HASH_BITS_SIDE = 8
_LUMA_SIDE = 16
_CHROMA_SIDE = 4
_LUMA_SIZE = _LUMA_SIDE * _LUMA_SIDE
_CHROMA_SIZE = 2 * _CHROMA_SIDE * _CHROMA_SIDE
_BLOCK = 64  # rows of the pHash filter per step: small blocks stay in cache (5x faster than 1024)

Key = TypeVar("Key", bound=Hashable)


def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II as a matrix: coefficients = M @ x @ M.T (no scipy needed for a 32x32 block)."""
    import numpy as np

    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    matrix = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    matrix[0] /= math.sqrt(2.0)
    return matrix


@functools.cache
def _dct() -> np.ndarray:
    return _dct_matrix(_HASH_GRID)


@dataclass(frozen=True)
class Fingerprint:
    """What two copies of one picture share. `luma` is 16x16 grey levels, `chroma` 4x4 Cb then 4x4 Cr."""

    phash: int  # 64 bits
    luma: bytes  # _LUMA_SIZE uint8, row-major
    chroma: bytes  # _CHROMA_SIZE uint8
    width: int
    height: int

    def to_text(self) -> str:
        """Compact text for a JSON column: "v1:<pHash hex>:<width>x<height>:<base64 luma + chroma>"."""
        blob = base64.b64encode(self.luma + self.chroma).decode("ascii")
        return f"{FINGERPRINT_VERSION}:{self.phash:016x}:{self.width}x{self.height}:{blob}"

    @classmethod
    def from_text(cls, text: str) -> Fingerprint:
        """The inverse of to_text; ValueError names what is wrong with a string that is not one."""
        parts = text.split(":")
        if len(parts) != 4 or parts[0] != FINGERPRINT_VERSION:
            raise ValueError(f"not a {FINGERPRINT_VERSION} image fingerprint: {text[:40]!r}")
        _, phash_hex, size, blob = parts
        width_text, _, height_text = size.partition("x")
        raw = base64.b64decode(blob, validate=True)
        if len(raw) != _LUMA_SIZE + _CHROMA_SIZE or len(phash_hex) != 16:
            raise ValueError(f"truncated image fingerprint: {text[:40]!r}")
        return cls(
            phash=int(phash_hex, 16),
            luma=raw[:_LUMA_SIZE],
            chroma=raw[_LUMA_SIZE:],
            width=int(width_text),
            height=int(height_text),
        )


def fingerprint(image: Image.Image, min_side: int = MIN_SIDE) -> Fingerprint | None:
    """The fingerprint of a decoded image, or None when it is too small to compare safely."""
    import numpy as np

    width, height = image.size
    if min(width, height) < min_side:
        return None
    # Everything is read from one 64x64 working copy: a 24-megapixel photo costs ~0.1 s, and every copy of a
    # picture, large or small, goes through the same last resampling steps.
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    work = rgb.resize((_WORK_SIDE, _WORK_SIDE), Image.Resampling.LANCZOS, reducing_gap=2.0)
    luma_channel, cb, cr = work.convert("YCbCr").split()
    grid = _resized(luma_channel, _HASH_GRID)
    dct = _dct()
    coefficients = dct @ grid @ dct.T
    low = coefficients[:_HASH_BITS_SIDE, :_HASH_BITS_SIDE].ravel()
    bits = np.packbits(low > np.median(low))
    luma = _resized(luma_channel, _LUMA_SIDE)
    chroma = np.concatenate(
        [_resized(channel, _CHROMA_SIDE, Image.Resampling.BOX).ravel() for channel in (cb, cr)]
    )
    return Fingerprint(
        phash=int.from_bytes(bits.tobytes(), "big"),
        luma=_to_bytes(luma),
        chroma=_to_bytes(chroma),
        width=width,
        height=height,
    )


def fingerprint_meta(image: Image.Image) -> dict[str, str]:
    """What ingest adds to an image item's meta: {"fingerprint": text}, or nothing for a tiny image."""
    fp = fingerprint(image)
    return {FINGERPRINT_KEY: fp.to_text()} if fp is not None else {}


def _resized(
    channel: Image.Image, side: int, resample: Image.Resampling = Image.Resampling.LANCZOS
) -> np.ndarray:
    import numpy as np

    return np.asarray(channel.resize((side, side), resample), dtype=np.float64)


def _to_bytes(values: np.ndarray) -> bytes:
    import numpy as np

    return np.clip(np.rint(values), 0, 255).astype(np.uint8).tobytes()


@dataclass(frozen=True)
class DuplicateRule:
    """When two fingerprints are the same picture. Defaults are the thresholds bench/duplicates.py chose."""

    max_hamming: int = 10  # pHash bits
    max_luma_rms: float = 3.0  # grey levels (0-255) between the 16x16 thumbnails
    min_luma_corr: float = 0.97  # Pearson correlation of the 16x16 thumbnails
    max_chroma_diff: float = 6.0  # largest Cb/Cr difference of the 4x4 colour summaries
    max_aspect_diff: float = 0.08  # |log(aspect a / aspect b)|: 8%, rounding of small thumbnails included
    min_cosine: float = 0.9  # embedding agreement, applied only when both images have a vector
    # complete: a group grows only by images that match every member (no chains of look-alikes)
    linkage: Literal["complete", "single"] = "complete"


@dataclass(frozen=True)
class PairDistance:
    hamming: int
    luma_rms: float
    luma_corr: float
    chroma_diff: float
    aspect_diff: float

    def within(self, rule: DuplicateRule) -> bool:
        import numpy as np

        as_arrays = {name: np.array([value]) for name, value in asdict(self).items()}
        return bool(within_rule(as_arrays, rule)[0])


def compare(a: Fingerprint, b: Fingerprint) -> PairDistance:
    """Every distance the rule looks at, for one pair."""
    import numpy as np

    arrays = _FingerprintArrays.of([a, b])
    hamming, rms, corr, chroma, aspect = arrays.distances(np.array([0]), np.array([1]))
    return PairDistance(int(hamming[0]), float(rms[0]), float(corr[0]), float(chroma[0]), float(aspect[0]))


def is_duplicate(
    a: Fingerprint,
    b: Fingerprint,
    rule: DuplicateRule | None = None,
    vector_a: np.ndarray | None = None,
    vector_b: np.ndarray | None = None,
) -> bool:
    rule = rule or DuplicateRule()
    if not compare(a, b).within(rule):
        return False
    return vector_a is None or vector_b is None or _cosine(vector_a, vector_b) >= rule.min_cosine


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    import numpy as np

    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.dot(a, b) / norm) if norm > 0 else 0.0


@dataclass
class _FingerprintArrays:
    """Fingerprints as arrays, so distances for many pairs are computed at once."""

    phash: np.ndarray  # uint64 (n,)
    luma: np.ndarray  # float32 (n, 256), each row centred
    luma_mean: np.ndarray  # float32 (n,)
    luma_norm: np.ndarray  # float32 (n,), norm of the centred row
    chroma: np.ndarray  # float32 (n, 32)
    log_aspect: np.ndarray  # float64 (n,)

    @classmethod
    def of(cls, prints: Sequence[Fingerprint]) -> _FingerprintArrays:
        import numpy as np

        n = len(prints)
        luma = np.frombuffer(b"".join(p.luma for p in prints), dtype=np.uint8).reshape(n, _LUMA_SIZE)
        luma = luma.astype(np.float32)
        mean = luma.mean(axis=1)
        centred = luma - mean[:, None]
        chroma = np.frombuffer(b"".join(p.chroma for p in prints), dtype=np.uint8).reshape(n, _CHROMA_SIZE)
        return cls(
            phash=np.array([p.phash for p in prints], dtype=np.uint64),
            luma=centred,
            luma_mean=mean,
            luma_norm=np.linalg.norm(centred, axis=1),
            chroma=chroma.astype(np.float32),
            log_aspect=np.log(np.array([p.width / p.height for p in prints], dtype=np.float64)),
        )

    def distances(
        self, left: np.ndarray, right: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(hamming, luma RMS, luma correlation, chroma max diff, aspect diff) for pairs left[k], right[k]."""
        import numpy as np

        hamming = np.bitwise_count(self.phash[left] ^ self.phash[right])
        centred_l, centred_r = self.luma[left], self.luma[right]
        mean_diff = self.luma_mean[left] - self.luma_mean[right]
        # RMS of (a - b) from the centred rows: mean((ca - cb)^2) + (mean a - mean b)^2
        rms = np.sqrt(np.mean((centred_l - centred_r) ** 2, axis=1) + mean_diff**2)
        norms = self.luma_norm[left] * self.luma_norm[right]
        dot = np.einsum("ij,ij->i", centred_l, centred_r)
        corr = np.where(norms == 0, 0.0, dot / np.maximum(norms, 1e-12))
        chroma = np.abs(self.chroma[left] - self.chroma[right]).max(axis=1)
        aspect = np.abs(self.log_aspect[left] - self.log_aspect[right])
        return hamming, rms, corr, chroma, aspect


def candidate_pairs(prints: Sequence[Fingerprint], max_hamming: int) -> tuple[np.ndarray, np.ndarray]:
    """Index arrays (left, right), left < right, of the pairs whose pHashes are within max_hamming bits.

    XOR and popcount over all pairs: about 30 s for 100,000 images on one core, milliseconds for one new
    image against a collection.
    """
    import numpy as np

    hashes = np.array([p.phash for p in prints], dtype=np.uint64)
    lefts: list[np.ndarray] = [np.zeros(0, dtype=np.intp)]
    rights: list[np.ndarray] = [np.zeros(0, dtype=np.intp)]
    for start in range(0, len(prints) - 1, _BLOCK):
        block, later = hashes[start : start + _BLOCK], hashes[start:]
        rows, columns = np.nonzero(np.bitwise_count(block[:, None] ^ later[None, :]) <= max_hamming)
        later_only = columns > rows  # each pair once, no self-pairs
        lefts.append(rows[later_only] + start)
        rights.append(columns[later_only] + start)
    return np.concatenate(lefts), np.concatenate(rights)


def pair_distances(
    prints: Sequence[Fingerprint], left: np.ndarray, right: np.ndarray
) -> dict[str, np.ndarray]:
    """Every distance the rule looks at, for the pairs (left[k], right[k]): arrays keyed like PairDistance."""
    hamming, rms, corr, chroma, aspect = _FingerprintArrays.of(prints).distances(left, right)
    return {
        "hamming": hamming,
        "luma_rms": rms,
        "luma_corr": corr,
        "chroma_diff": chroma,
        "aspect_diff": aspect,
    }


def within_rule(distances: Mapping[str, np.ndarray], rule: DuplicateRule) -> np.ndarray:
    """Boolean mask over pairs: which ones the rule's image thresholds accept (vectors not considered)."""
    return (
        (distances["hamming"] <= rule.max_hamming)
        & (distances["luma_rms"] <= rule.max_luma_rms)
        & (distances["luma_corr"] >= rule.min_luma_corr)
        & (distances["chroma_diff"] <= rule.max_chroma_diff)
        & (distances["aspect_diff"] <= rule.max_aspect_diff)
    )


def duplicate_pairs(
    prints: Sequence[Fingerprint],
    rule: DuplicateRule | None = None,
    vectors: Sequence[np.ndarray | None] | None = None,
) -> list[tuple[int, int, float]]:
    """(i, j, luma RMS) for every pair i < j of `prints` that the rule calls duplicates."""
    rule = rule or DuplicateRule()
    if vectors is not None and len(vectors) != len(prints):
        raise ValueError(f"{len(prints)} fingerprints but {len(vectors)} vectors")
    left, right = candidate_pairs(prints, rule.max_hamming)
    if left.size == 0:
        return []
    distances = pair_distances(prints, left, right)
    keep = within_rule(distances, rule)
    pairs = []
    for i, j, rms in zip(left[keep], right[keep], distances["luma_rms"][keep], strict=True):
        vector_i = vectors[i] if vectors is not None else None
        vector_j = vectors[j] if vectors is not None else None
        if vector_i is not None and vector_j is not None and _cosine(vector_i, vector_j) < rule.min_cosine:
            continue
        pairs.append((int(i), int(j), float(rms)))
    return pairs


def group_duplicates(
    items: Sequence[tuple[Key, Fingerprint]],
    rule: DuplicateRule | None = None,
    vectors: Mapping[Key, np.ndarray] | None = None,
) -> list[list[Key]]:
    """Groups of two or more keys whose images are the same picture, each in input order, largest first.

    Pairs are merged closest first. With complete linkage (the default) two groups merge only when every
    image of one matches every image of the other, so a chain of look-alikes (A like B, B like C) never
    puts A and C together unless they match too.
    """
    rule = rule or DuplicateRule()
    keys = [key for key, _ in items]
    if len(set(keys)) != len(keys):
        raise ValueError("group_duplicates: the same key appears twice")
    vector_list = [vectors.get(key) for key in keys] if vectors is not None else None
    pairs = duplicate_pairs([fp for _, fp in items], rule, vector_list)
    return [[keys[i] for i in members] for members in _agglomerate(len(items), pairs, rule.linkage)]


def _agglomerate(
    n: int, pairs: list[tuple[int, int, float]], linkage: Literal["complete", "single"]
) -> list[list[int]]:
    parent = list(range(n))
    members: dict[int, list[int]] = {i: [i] for i in range(n)}
    matching = {(i, j) for i, j, _ in pairs}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j, _ in sorted(pairs, key=lambda pair: (pair[2], pair[0], pair[1])):
        a, b = root(i), root(j)
        if a == b:
            continue
        if linkage == "complete" and not all(
            (min(x, y), max(x, y)) in matching for x in members[a] for y in members[b]
        ):
            continue
        if len(members[a]) < len(members[b]):
            a, b = b, a
        parent[b] = a
        members[a].extend(members.pop(b))
    groups = [sorted(group) for group in members.values() if len(group) > 1]
    return sorted(groups, key=lambda group: (-len(group), group[0]))
