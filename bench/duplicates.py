"""`python -m bench.duplicates`: choose and check the near-duplicate thresholds on real images.

Pairs that must group (positives): each real photo of ../shared/DATA.md (and skimage's real microscope
images), its original kept lossless (PNG), against its copies resized (x2, 0.75, 0.5, 0.25; Lanczos, bicubic,
bilinear, nearest), thumbnails (256 down to 16 px), JPEG at qualities 95 to 15, WebP, resized-then-JPEG,
and the photo embedded in a PDF (lossless, JPEG, and a downscaled JPEG) by PyMuPDF and extracted back by
mmrag's own `extract_pdf`. Every pair inside a photo's copies is a positive pair.

Pairs that must not group (negatives): every pair of different sources: the photos and their copies, five
synthetic pictures (checkerboard, horse silhouette, phantom, colour wheel, logo), scikit-image's LFW subset
(100 faces, 100 non-faces, 25x25, scaled up x4 so the size limit does not hide them), scikit-learn's 1,797
handwritten digits (8x8, scaled up x8 with nearest neighbour; pairs of the same digit are the hardest), and
every page of the gnuplot manual rendered at 50 dpi (pages of text look alike at thumbnail size).

Not counted either way, reported alone: crops (2, 5, 10% off each side: a crop shows less of the scene, so it
is another picture to this rule), grey, brightness and contrast edits, and the right view of scikit-image's
stereo motorcycle pair, and a copy stretched 10% wider. The size limit is checked on the native 25x25 faces
and 8x8 digits.

Prints the tables of the README section "Near-duplicate images" and writes bench/results/duplicates.json.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import logging
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pymupdf
from PIL import Image, ImageEnhance

from mmrag.ingest.dedup import (
    MIN_SIDE,
    DuplicateRule,
    Fingerprint,
    candidate_pairs,
    compare,
    fingerprint,
    group_duplicates,
    pair_distances,
    within_rule,
)

RESULTS = Path(__file__).resolve().parent / "results" / "duplicates.json"
GNUPLOT_DPI = 50
LOOSE_HAMMING = 20  # pairs further apart than this in pHash are never within any rule in the tables
_LANCZOS = Image.Resampling.LANCZOS

# Real photos (../shared/DATA.md) and scikit-image's real microscope images: the sources of positive groups.
REAL_PHOTOS = (
    "astronaut", "chelsea", "coffee", "rocket", "camera", "hubble_deep_field", "retina", "coins", "moon",
    "clock", "brick", "grass", "gravel", "page", "text", "cell", "immunohistochemistry", "microaneurysms",
    "motorcycle_left", "china", "flower", "grace_hopper",
)  # fmt: skip
SYNTHETIC = ("checkerboard", "horse", "shepp_logan_phantom", "colorwheel", "logo")


@dataclass
class Sample:
    key: str
    source: str  # samples with the same source are copies of one picture
    category: str  # photo | synthetic | lfw | digits | gnuplot
    variant: str
    image: Image.Image


def _rgb(array: np.ndarray) -> Image.Image:
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        array = np.clip(np.rint(array * 255.0 if array.max() <= 1.0 else array), 0, 255).astype(np.uint8)
    if array.ndim == 3 and array.shape[2] == 4:
        rgba = Image.fromarray(array, "RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return Image.fromarray(array).convert("RGB")


@functools.cache
def load_source(name: str) -> Image.Image:
    """The picture `name` as RGB; cached and shared, so callers must not change it in place."""
    import skimage.data

    if name == "motorcycle_left":
        return _rgb(skimage.data.stereo_motorcycle()[0])
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        return _rgb(load_sample_image(f"{name}.jpg"))
    if name == "grace_hopper":
        from matplotlib import cbook

        with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as image:
            return image.convert("RGB")
    return _rgb(getattr(skimage.data, name)())


def _encoded(image: Image.Image, fmt: str, **options: Any) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    with Image.open(io.BytesIO(buffer.getvalue())) as decoded:
        return decoded.convert("RGB")


def _scaled(image: Image.Image, factor: float, resample: Image.Resampling = _LANCZOS) -> Image.Image:
    width, height = image.size
    return image.resize((max(1, round(width * factor)), max(1, round(height * factor))), resample)


def _thumbnail(image: Image.Image, side: int) -> Image.Image:
    copy = image.copy()
    copy.thumbnail((side, side), _LANCZOS)
    return copy


def _cropped(image: Image.Image, fraction: float) -> Image.Image:
    width, height = image.size
    dx, dy = round(width * fraction), round(height * fraction)
    return image.crop((dx, dy, width - dx, height - dy))


THUMBNAIL_SIDES = (256, 128, 64, 48, 32, 24, 16)
COPIES: dict[str, Callable[[Image.Image], Image.Image]] = {
    "orig.png": lambda im: _encoded(im, "PNG"),
    "x2": lambda im: _scaled(im, 2.0),
    "x0.75": lambda im: _scaled(im, 0.75),
    "x0.5": lambda im: _scaled(im, 0.5),
    "x0.25": lambda im: _scaled(im, 0.25),
    "x0.5 bicubic": lambda im: _scaled(im, 0.5, Image.Resampling.BICUBIC),
    "x0.33 bilinear": lambda im: _scaled(im, 1 / 3, Image.Resampling.BILINEAR),
    "x0.5 nearest": lambda im: _scaled(im, 0.5, Image.Resampling.NEAREST),
    **{f"thumb{side}": (lambda im, s=side: _thumbnail(im, s)) for side in THUMBNAIL_SIDES},
    **{f"jpeg q{q}": (lambda im, q=q: _encoded(im, "JPEG", quality=q)) for q in (95, 85, 75, 50, 30, 15)},
    "webp q80": lambda im: _encoded(im, "WEBP", quality=80),
    "x0.5 + jpeg q70": lambda im: _encoded(_scaled(im, 0.5), "JPEG", quality=70),
    "thumb256 + jpeg q60": lambda im: _encoded(_thumbnail(im, 256), "JPEG", quality=60),
}
# Embedded in a PDF: (variant name, the bytes PyMuPDF inserts).
PDF_COPIES: dict[str, Callable[[Image.Image], bytes]] = {
    "pdf png": lambda im: _bytes(im, "PNG"),
    "pdf jpeg q90": lambda im: _bytes(im, "JPEG", quality=90),
    "pdf x0.5 jpeg q75": lambda im: _bytes(_scaled(im, 0.5), "JPEG", quality=75),
}
EDITS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "crop 2%": lambda im: _cropped(im, 0.02),
    "crop 5%": lambda im: _cropped(im, 0.05),
    "crop 10%": lambda im: _cropped(im, 0.10),
    "grey": lambda im: im.convert("L").convert("RGB"),
    "brightness +10%": lambda im: ImageEnhance.Brightness(im).enhance(1.1),
    "contrast +20%": lambda im: ImageEnhance.Contrast(im).enhance(1.2),
    "stretched 10% wider": lambda im: im.resize((round(im.width * 1.1), im.height), _LANCZOS),
}


def _bytes(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def photo_samples(names: Sequence[str]) -> list[Sample]:
    samples = []
    for name in names:
        original = load_source(name)
        for variant, make in COPIES.items():
            samples.append(Sample(f"{name}/{variant}", name, "photo", variant, make(original)))
    return samples


def pdf_samples(names: Sequence[str], folder: Path) -> list[Sample]:
    """Each photo on a page of its own, once per PDF copy; extracted back by mmrag's extract_pdf."""
    from mmrag.ingest.pdf import extract_pdf
    from mmrag.settings import IngestSettings

    path = folder / "photos.pdf"
    doc = pymupdf.open()
    slot_of: dict[tuple[int, tuple[int, ...]], tuple[str, str]] = {}
    settings = IngestSettings()
    too_small = 0  # extract_pdf skips images under min_pdf_image_side (icons) by design
    for page_number, name in enumerate(names, start=1):
        original = load_source(name)
        page = doc.new_page(width=595, height=842)
        for slot, (variant, make) in enumerate(PDF_COPIES.items()):
            rect = pymupdf.Rect(50, 40 + slot * 260, 545, 280 + slot * 260)
            data = make(original)
            page.insert_image(rect, stream=data)
            with Image.open(io.BytesIO(data)) as inserted:
                too_small += min(inserted.size) < settings.min_pdf_image_side
            placed = page.get_image_info()[-1]["bbox"]
            slot_of[(page_number, tuple(round(v) for v in placed))] = (name, variant)
    doc.save(path, garbage=3, deflate=True)
    doc.close()
    samples = []
    for item in extract_pdf(path, settings):
        if item.image is None or item.page is None or item.bbox is None:
            continue
        name, variant = slot_of[(item.page, tuple(round(v) for v in item.bbox))]
        samples.append(Sample(f"{name}/{variant}", name, "photo", variant, item.image))
    if len(samples) != len(slot_of) - too_small:
        raise RuntimeError(f"extract_pdf gave {len(samples)} images, expected {len(slot_of) - too_small}")
    return samples


def synthetic_samples() -> list[Sample]:
    return [Sample(f"{name}/orig", name, "synthetic", "orig", load_source(name)) for name in SYNTHETIC]


def _grey_to_rgb(values: np.ndarray, scale: int, resample: Image.Resampling) -> Image.Image:
    image = Image.fromarray(values)
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), resample)
    return image.convert("RGB")


def lfw_images(scale: int) -> Iterator[tuple[int, Image.Image]]:
    from skimage.data import lfw_subset

    for index, face in enumerate(lfw_subset()):
        yield index, _grey_to_rgb(np.rint(face * 255).astype(np.uint8), scale, Image.Resampling.BICUBIC)


def digit_images(scale: int) -> Iterator[tuple[int, int, Image.Image]]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    for index, (values, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        grey = np.rint(values * 255.0 / 16.0).astype(np.uint8)
        yield index, int(label), _grey_to_rgb(grey, scale, Image.Resampling.NEAREST)


def lfw_samples(scale: int = 4) -> list[Sample]:
    kind = lambda i: "face" if i < 100 else "non-face"  # noqa: E731
    return [Sample(f"lfw/{i}", f"lfw/{i}", "lfw", kind(i), image) for i, image in lfw_images(scale)]


def digit_samples(scale: int = 8) -> list[Sample]:
    return [
        Sample(f"digits/{i}", f"digits/{i}", "digits", f"digit {label}", image)
        for i, label, image in digit_images(scale)
    ]


def gnuplot_samples(pdf: Path, dpi: int = GNUPLOT_DPI, pages: int | None = None) -> list[Sample]:
    """Every page (or the first `pages`) of the PDF rendered at `dpi`."""
    samples = []
    with pymupdf.open(pdf) as doc:
        for index in range(min(doc.page_count, pages or doc.page_count)):
            pixmap = doc.load_page(index).get_pixmap(dpi=dpi, alpha=False)
            image = Image.frombytes("RGB", (pixmap.width, pixmap.height), pixmap.samples)
            samples.append(Sample(f"gnuplot/p{index + 1}", f"gnuplot/p{index + 1}", "gnuplot", "page", image))
    return samples


# ---- evaluation -------------------------------------------------------------------------------------------


@dataclass
class Fingerprinted:
    """The validation set's fingerprints, computed without the size limit (applied later), and the distances
    of every pair whose pHashes are within LOOSE_HAMMING (no rule in the tables reaches further)."""

    samples: list[Sample]
    prints: list[Fingerprint]
    min_sides: np.ndarray  # shorter side of each image
    left: np.ndarray
    right: np.ndarray
    distances: dict[str, np.ndarray]
    same: np.ndarray  # per pair: copies of one picture?

    @classmethod
    def of(cls, samples: list[Sample]) -> Fingerprinted:
        prints = [fingerprint(sample.image, min_side=1) for sample in samples]
        assert all(fp is not None for fp in prints)
        checked = [fp for fp in prints if fp is not None]
        left, right = candidate_pairs(checked, LOOSE_HAMMING)
        sources = np.array([s.source for s in samples])
        return cls(
            samples=samples,
            prints=checked,
            min_sides=np.array([min(s.image.size) for s in samples]),
            left=left,
            right=right,
            distances=pair_distances(checked, left, right),
            same=sources[left] == sources[right],
        )

    def eligible(self, min_side: int) -> np.ndarray:
        return self.min_sides >= min_side

    def positive_pairs(self) -> int:
        sizes = Counter(s.source for s in self.samples)
        return sum(n * (n - 1) // 2 for n in sizes.values())

    def pair_categories(self) -> np.ndarray:
        categories = np.array([s.category for s in self.samples])
        return np.array(
            [
                "/".join(sorted({str(a), str(b)}))
                for a, b in zip(categories[self.left], categories[self.right], strict=True)
            ]
        )


def pairwise_scores(data: Fingerprinted, rule: DuplicateRule, min_side: int) -> dict[str, Any]:
    """Pairs the rule accepts directly (no grouping): true and false, precision and recall."""
    eligible = data.eligible(min_side)
    accepted = within_rule(data.distances, rule) & eligible[data.left] & eligible[data.right]
    true_pairs = int(np.count_nonzero(accepted & data.same))
    false_pairs = int(np.count_nonzero(accepted & ~data.same))
    positives = data.positive_pairs()
    return {
        "true_pairs": true_pairs,
        "false_pairs": false_pairs,
        "precision": true_pairs / (true_pairs + false_pairs) if true_pairs + false_pairs else 1.0,
        "recall": true_pairs / positives if positives else 1.0,
        "false_by_category": dict(Counter(data.pair_categories()[accepted & ~data.same].tolist())),
    }


def group_scores(data: Fingerprinted, rule: DuplicateRule, min_side: int) -> dict[str, Any]:
    """Groups formed by group_duplicates over the whole set, scored against the true sources."""
    eligible = data.eligible(min_side)
    groups = group_duplicates([(i, data.prints[i]) for i in np.flatnonzero(eligible).tolist()], rule)
    source = [s.source for s in data.samples]
    pure = [g for g in groups if len({source[i] for i in g}) == 1]
    group_of = {i: n for n, g in enumerate(groups) for i in g}
    # A photo's group is found whole when all its fingerprinted copies are in one group.
    fingerprinted: dict[str, list[int]] = defaultdict(list)
    for i in np.flatnonzero(eligible).tolist():
        fingerprinted[source[i]].append(i)
    true_groups = [members for members in fingerprinted.values() if len(members) > 1]
    whole = sum(len({group_of.get(i, -1 - i) for i in members}) == 1 for members in true_groups)
    in_group_pairs = sum(len(g) * (len(g) - 1) // 2 for g in groups)
    true_in_group = sum(n * (n - 1) // 2 for g in groups for n in Counter(source[i] for i in g).values())
    positives = data.positive_pairs()
    original = {s.source: i for i, s in enumerate(data.samples) if s.variant == "orig.png"}
    with_original: dict[str, list[bool]] = defaultdict(list)
    for i, s in enumerate(data.samples):
        if s.category == "photo" and s.variant != "orig.png":
            home = group_of.get(original[s.source])
            with_original[s.variant].append(home is not None and group_of.get(i) == home)
    copies = [hit for hits in with_original.values() for hit in hits]
    return {
        "groups": len(groups),
        "pure_groups": len(pure),
        "group_precision": len(pure) / len(groups) if groups else 1.0,
        "photos": len(true_groups),
        "photos_found_whole": int(whole),
        "group_recall": whole / len(true_groups) if true_groups else 1.0,
        "copies_with_original": sum(copies) / len(copies) if copies else 1.0,
        "pair_precision": true_in_group / in_group_pairs if in_group_pairs else 1.0,
        "pair_recall": true_in_group / positives if positives else 1.0,
        "false_groups": [[data.samples[i].key for i in g] for g in groups if g not in pure][:10],
        "with_original_by_variant": {v: sum(hits) / len(hits) for v, hits in with_original.items()},
    }


_CHECKS = {  # distance -> (rule field, is a larger value closer?)
    "hamming": ("max_hamming", False),
    "luma_rms": ("max_luma_rms", False),
    "luma_corr": ("min_luma_corr", True),
    "chroma_diff": ("max_chroma_diff", False),
    "aspect_diff": ("max_aspect_diff", False),
}


def margins(data: Fingerprinted, rule: DuplicateRule) -> list[dict[str, Any]]:
    """Per check and category, the pair of different pictures that comes closest on that check among the
    pairs that pass every other check (pHash loosened to LOOSE_HAMMING): how far each threshold is from a
    false pair. A check with no row here has no different pictures passing all the others."""
    categories = data.pair_categories()
    rows = []
    for check, (field_name, larger_is_closer) in _CHECKS.items():
        lifted: dict[str, Any] = {"max_hamming": LOOSE_HAMMING, field_name: -1.0 if larger_is_closer else 1e9}
        mask = (
            within_rule(data.distances, replace(rule, **lifted))
            & ~data.same
            & data.eligible(MIN_SIDE)[data.left]
        )
        mask &= data.eligible(MIN_SIDE)[data.right]
        for category in sorted(set(categories[mask].tolist())):
            ks = np.flatnonzero(mask & (categories == category))
            values = data.distances[check][ks]
            k = int(ks[np.argmax(values) if larger_is_closer else np.argmin(values)])
            rows.append(
                {
                    "check": check,
                    "threshold": getattr(rule, field_name),
                    "category": category,
                    "pairs_passing_the_others": int(ks.size),
                    "closest": round(float(data.distances[check][k]), 3),
                    "pair": [data.samples[data.left[k]].key, data.samples[data.right[k]].key],
                }
            )
    return rows


def _has_colour(image: Image.Image) -> bool:
    channels = np.asarray(image.convert("RGB"), dtype=np.int16)
    return bool(np.abs(np.diff(channels, axis=2)).max() > 8)


def edit_report(names: Sequence[str], rule: DuplicateRule) -> dict[str, dict[str, Any]]:
    """Crops and edits (not counted as positives): how many would group with their original."""
    import skimage.data

    report: dict[str, dict[str, Any]] = {}
    originals = {name: load_source(name) for name in names}
    reference = {name: fingerprint(image) for name, image in originals.items()}
    for edit, make in EDITS.items():
        grouped = []
        for name, ref in reference.items():
            if edit == "grey" and not _has_colour(originals[name]):
                continue  # a grey photo made grey is the same photo
            copy = fingerprint(make(originals[name]))
            grouped.append(ref is not None and copy is not None and compare(ref, copy).within(rule))
        report[edit] = {"grouped": sum(grouped), "of": len(grouped)}
    left_view, right_view, _ = skimage.data.stereo_motorcycle()
    left_fp, right_fp = fingerprint(_rgb(left_view)), fingerprint(_rgb(right_view))
    assert left_fp is not None and right_fp is not None
    distance = compare(left_fp, right_fp)
    report["stereo pair, right view"] = {
        "grouped": int(distance.within(rule)),
        "of": 1,
        "distance": {k: round(float(v), 3) for k, v in asdict(distance).items()},
    }
    return report


def size_limit_report(
    data: Fingerprinted, rule: DuplicateRule, sides: Sequence[int], digits: int = 0
) -> list[dict[str, Any]]:
    """At each candidate size limit: false pairs among the native 25x25 faces and 8x8 digits, and in the
    whole set; recall; how many photos' small thumbnails still match their original."""
    native = Fingerprinted.of(
        [Sample(f"lfw25/{i}", f"lfw25/{i}", "lfw", "native", image) for i, image in lfw_images(1)]
        + [
            Sample(f"digits8/{i}", f"digits8/{i}", "digits", "native", image)
            for i, _, image in digit_images(1)
            if not digits or i < digits
        ]
    )
    pair_index = {(int(i), int(j)): k for k, (i, j) in enumerate(zip(data.left, data.right, strict=True))}
    accepted = within_rule(data.distances, rule)
    original = {s.source: i for i, s in enumerate(data.samples) if s.variant == "orig.png"}
    rows = []
    for side in sides:
        eligible = data.eligible(side)
        thumbnails = {}
        for thumb_side in THUMBNAIL_SIDES[-4:]:
            copies = [
                (original[s.source], i)
                for i, s in enumerate(data.samples)
                if s.variant == f"thumb{thumb_side}"
            ]
            matched = 0
            for i, j in copies:
                k = pair_index.get((min(i, j), max(i, j)))
                matched += bool(k is not None and accepted[k] and eligible[i] and eligible[j])
            thumbnails[f"thumb{thumb_side}"] = f"{matched}/{len(copies)}"
        whole_set = pairwise_scores(data, rule, side)
        rows.append(
            {
                "min_side": side,
                "native_false_pairs": pairwise_scores(native, rule, side)["false_pairs"],
                "set_false_pairs": whole_set["false_pairs"],
                "set_recall": round(whole_set["recall"], 4),
                "thumbnails_matching_original": thumbnails,
            }
        )
    return rows


def threshold_grid(data: Fingerprinted, rule: DuplicateRule) -> list[dict[str, Any]]:
    """Precision and recall with one threshold moved at a time around the chosen rule."""
    anything = {"max_luma_rms": 1e9, "min_luma_corr": -1.0, "max_chroma_diff": 255.0, "max_aspect_diff": 1e9}
    moves: list[tuple[str, dict[str, Any]]] = [("chosen", {})]
    moves += [("pHash", {"max_hamming": v}) for v in (6, 8, 12, 16)]
    moves += [("grey RMS", {"max_luma_rms": v}) for v in (2.0, 3.5, 4.0, 6.0, 8.0)]
    moves += [("grey correlation", {"min_luma_corr": v}) for v in (0.99, 0.95, 0.90, 0.80)]
    moves += [("grey RMS, no correlation", {"max_luma_rms": v, "min_luma_corr": -1.0}) for v in (3.0, 6.0)]
    moves += [("pHash alone", {"max_hamming": h, **anything}) for h in (4, 6, 8, 10)]
    rows = []
    for label, change in moves:
        scores = pairwise_scores(data, replace(rule, **change), MIN_SIDE)
        shown = {k: v for k, v in change.items() if k in ("max_hamming", "max_luma_rms", "min_luma_corr")}
        rows.append({"change": label, "values": shown, **scores})
    return rows


# ---- report -----------------------------------------------------------------------------------------------


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    rule = DuplicateRule()
    names = REAL_PHOTOS[: args.photos] if args.photos else REAL_PHOTOS
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mmrag-duplicates-") as folder:
        samples = photo_samples(names) + pdf_samples(names, Path(folder))
    samples += synthetic_samples() + lfw_samples()
    samples += digit_samples()[: args.digits] if args.digits else digit_samples()
    if args.gnuplot is not None and args.gnuplot.is_file():
        samples += gnuplot_samples(args.gnuplot)
    else:
        print(f"(no gnuplot manual at {args.gnuplot}: apt-get install gnuplot-doc; its pages are left out)")
    data = Fingerprinted.of(samples)
    n = len(samples)
    result: dict[str, Any] = {
        "rule": asdict(rule),
        "min_side": MIN_SIDE,
        "images": dict(Counter(s.category for s in samples)),
        "pairs": n * (n - 1) // 2,
        "positive_pairs": data.positive_pairs(),
        "pairwise": pairwise_scores(data, rule, MIN_SIDE),
        "groups": group_scores(data, rule, MIN_SIDE),
        "groups_single_linkage": group_scores(data, replace(rule, linkage="single"), MIN_SIDE),
        "grid": threshold_grid(data, rule),
        "min_side_table": size_limit_report(data, rule, (8, 16, 24, 32, 48), args.digits),
        "margins": margins(data, rule),
        "edits": edit_report(names, rule),
    }
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def print_report(result: dict[str, Any]) -> None:
    pairwise, groups, single = result["pairwise"], result["groups"], result["groups_single_linkage"]
    print(f"images {result['images']}: {result['pairs']:,} pairs, {result['positive_pairs']:,} positive")
    print(f"rule {result['rule']}, min side {result['min_side']} px\n")
    rows = [
        ["pairs, the rule alone", pairwise["precision"], pairwise["recall"],
         f"{pairwise['true_pairs']} true, {pairwise['false_pairs']} false"],
        ["pairs, after grouping", groups["pair_precision"], groups["pair_recall"], ""],
        ["groups", groups["group_precision"], groups["group_recall"],
         f"{groups['pure_groups']}/{groups['groups']} groups pure, "
         f"{groups['photos_found_whole']}/{groups['photos']} photos found whole"],
        ["copies grouped with their original", "", groups["copies_with_original"], ""],
        ["pairs, single linkage instead", single["pair_precision"], single["pair_recall"], ""],
    ]  # fmt: skip
    formatted = [[r[0], *(f"{v:.3f}" if isinstance(v, float) else v for v in r[1:3]), r[3]] for r in rows]
    print(_table(["", "precision", "recall", ""], formatted))
    print("\nfalse groups:", groups["false_groups"] or "none")
    print("\nOne threshold moved at a time (pairs, the rule alone):")
    print(
        _table(
            ["change", "to", "precision", "recall", "false pairs"],
            [
                [
                    r["change"],
                    r["values"] or "",
                    f"{r['precision']:.4f}",
                    f"{r['recall']:.4f}",
                    f"{r['false_pairs']} {r['false_by_category'] or ''}",
                ]
                for r in result["grid"]
            ],
        )
    )
    print("\nCopies grouped with their original (share of the photos):")
    shares = groups["with_original_by_variant"]
    print(_table(["copy", "share"], [[variant, f"{share:.2f}"] for variant, share in shares.items()]))
    print("\nSize limit (shorter side):")
    print(
        _table(
            [
                "min side",
                "false pairs, native faces + digits",
                "false pairs, set",
                "recall, set",
                "thumbnails matching",
            ],
            [
                [
                    r["min_side"],
                    r["native_false_pairs"],
                    r["set_false_pairs"],
                    r["set_recall"],
                    r["thumbnails_matching_original"],
                ]
                for r in result["min_side_table"]
            ],
        )
    )
    print(
        "\nMargins: the closest different pictures on each check, among pairs passing all the other checks:"
    )
    print(
        _table(
            ["check", "threshold", "categories", "pairs passing the others", "closest", "pair"],
            [
                [
                    r["check"],
                    r["threshold"],
                    r["category"],
                    r["pairs_passing_the_others"],
                    r["closest"],
                    " vs ".join(r["pair"]),
                ]
                for r in result["margins"]
            ],
        )
    )
    print("\nNot counted (edits, crops, the stereo pair): grouped with their original")
    print(_table(["edit", "grouped"], [[k, f"{v['grouped']}/{v['of']}"] for k, v in result["edits"].items()]))
    print(f"stereo pair distances: {result['edits']['stereo pair, right view']['distance']}")
    print(f"\n{result['seconds']} s")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from mmrag.evaluation.datasets import GNUPLOT_PDF

    parser = argparse.ArgumentParser(prog="python -m bench.duplicates", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes")
    parser.add_argument("--gnuplot", type=Path, default=GNUPLOT_PDF, help="the gnuplot manual (gnuplot-doc)")
    parser.add_argument("--photos", type=int, default=0, help="only the first N photos (a quick run)")
    parser.add_argument("--digits", type=int, default=0, help="only the first N digits (a quick run)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING)
    args = parse_args(argv)
    result = run(args)
    print_report(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
