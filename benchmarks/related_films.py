"""Where copies, other films of one anatomy and strangers fall in the geometry layer's evidence.

    .venv/bin/python benchmarks/related_films.py [--films 6] [--strangers 600]

For each source (the real chest radiograph RG1 and ankle radiograph RG3 of pydicom-data, and
generated phantoms) it makes copies (8% crop, 7-degree turn, half size, JPEG quality 50, 15%
brighter) and stand-ins for other films of the same anatomy
(:func:`fracture_curate.synthetic.planting.follow_up_film`: another projection, exposure, soft
tissue and grain), and measures each pair's evidence: keypoints on one similarity transform
(inliers) and their share of the ratio-test matches. Random pairs of different phantoms are the
strangers. The thresholds (fracture_curate.geometry) should leave a wide margin between them.
"""

from __future__ import annotations

import argparse
import io

import numpy as np
import pandas as pd
from foreign_images import dicom_frames, window
from PIL import Image

from fracture_curate.geometry import (
    COPY_INLIERS,
    COPY_SHARE,
    RELATED_INLIERS,
    Features,
    image_features,
    pair_evidence,
)
from fracture_curate.synthetic import draw_phantom
from fracture_curate.synthetic.planting import follow_up_film


def copies(image: np.ndarray) -> dict[str, np.ndarray]:
    """Copies of a uint8 grayscale image: the kinds only the geometry layer must find, and the
    kinds other layers find too."""
    picture = Image.fromarray(image)
    cut = round(0.08 * picture.width)
    jpeg = io.BytesIO()
    picture.save(jpeg, format="JPEG", quality=50)
    return {
        "crop 8%": np.asarray(picture.crop((cut, cut, picture.width, picture.height))),
        "turn 7 deg": np.asarray(picture.rotate(7, Image.Resampling.BICUBIC, expand=True)),
        "half size": np.asarray(picture.resize((picture.width // 2, picture.height // 2))),
        "jpeg q50": np.asarray(Image.open(jpeg)),
        "15% brighter": np.clip(image.astype(np.float32) * 1.15, 0, 255).astype(np.uint8),
    }


def radiograph(name: str) -> np.ndarray:
    """A real radiograph of pydicom-data as 8-bit grayscale, bone bright."""
    frames, monochrome1 = dicom_frames(name)
    return np.round(window(frames[0], 0, 100, invert=monochrome1) * 255).astype(np.uint8)


def evidence(a: Features, b: Features) -> dict[str, float]:
    inliers, matches = pair_evidence(a, b)
    return {"inliers": inliers, "share": inliers / max(matches, 1)}


def measure(name: str, image: np.ndarray, films: int, rng: np.random.Generator) -> list[dict]:
    """Evidence rows for one source: its copies, its other films, copies of one other film."""
    source = image_features(image)
    rows = [
        {"source": name, "pair": "copy", "kind": kind} | evidence(image_features(copy), source)
        for kind, copy in copies(image).items()
    ]
    made = [follow_up_film(rng, image)[0] for _ in range(films)]
    features = [image_features(film) for film in made]
    rows += [
        {"source": name, "pair": "other film", "kind": "vs first"} | evidence(film, source)
        for film in features
    ]
    rows += [
        {"source": name, "pair": "other film", "kind": "vs each other"}
        | evidence(features[i], features[j])
        for i in range(films)
        for j in range(i + 1, films)
    ]
    rows += [
        {"source": name, "pair": "copy", "kind": f"{kind} of a film"}
        | evidence(image_features(copy), features[0])
        for kind, copy in copies(made[0]).items()
    ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--films", type=int, default=6, help="other films made per source")
    parser.add_argument("--strangers", type=int, default=600, help="random pairs of phantoms")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    sources = {
        "chest RG1": radiograph("RG1_UNCR.dcm"),
        "ankle RG3": radiograph("RG3_UNCR.dcm"),
    }
    sources |= {
        f"phantom {k}": np.asarray(draw_phantom(np.random.default_rng(k), 384, k % 2 == 0))
        for k in range(4)
    }
    rows = [row for name, image in sources.items() for row in measure(name, image, args.films, rng)]
    phantoms = [
        image_features(np.asarray(draw_phantom(np.random.default_rng(100 + k), 384, k % 2 == 0)))
        for k in range(40)
    ]
    pairs = rng.choice(len(phantoms), (args.strangers, 2))
    rows += [
        {"source": "phantoms", "pair": "stranger", "kind": "different phantoms"}
        | evidence(phantoms[i], phantoms[j])
        for i, j in pairs
        if i != j
    ]
    table = pd.DataFrame(rows)
    table["source"] = table["source"].str.replace(r"phantom \d+", "phantoms", regex=True)
    summary = table.groupby(["pair", "source"]).agg(
        pairs=("inliers", "size"),
        inliers_min=("inliers", "min"),
        inliers_max=("inliers", "max"),
        share_min=("share", "min"),
        share_max=("share", "max"),
    )
    print(summary.to_string(float_format=lambda v: f"{v:.2f}"))
    copy, film = table[table["pair"] == "copy"], table[table["pair"] == "other film"]
    stranger = table[table["pair"] == "stranger"]
    called_copy = (table["inliers"] >= COPY_INLIERS) & (table["share"] >= COPY_SHARE)
    related = (table["inliers"] >= RELATED_INLIERS) & ~called_copy
    print(
        f"\nthresholds: copy >= {COPY_INLIERS} inliers and >= {COPY_SHARE:.0%} of matches; "
        f"related >= {RELATED_INLIERS} inliers otherwise"
    )
    print(f"copies called copies: {called_copy[copy.index].mean():.3f}")
    print(f"other films called copies: {called_copy[film.index].sum()} of {len(film)}")
    for name, group in film.groupby("source"):
        print(f"other films of {name} found related: {related[group.index].mean():.3f}")
    print(f"strangers called copies or related: {(called_copy | related)[stranger.index].sum()}")


if __name__ == "__main__":
    main()
