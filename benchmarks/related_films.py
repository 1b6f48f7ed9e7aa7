"""Where copies, other films of one anatomy and strangers fall in the geometry layer's evidence.

    .venv/bin/python benchmarks/related_films.py [--seeds 0-4] [--films 6] [--strangers 600]

For each source (the real chest radiograph RG1 and ankle radiograph RG3 of pydicom-data, and
generated phantoms) it makes copies (8% crop, 7-degree turn, half size, JPEG quality 50, 15%
brighter) and stand-ins for other films of the same anatomy
(:func:`fracture_curate.synthetic.planting.follow_up_film`: another projection, exposure, soft
tissue and grain), and measures each pair's evidence: keypoints on one similarity transform
(inliers) and their share of the ratio-test matches. Random pairs of different phantoms are the
strangers. The thresholds (fracture_curate.geometry) should leave a wide margin between them.
Each pair is also screened as dedupe screens it (small images, fewer keypoints): the screen's
inliers of the pairs the full test calls copies or related must stay above the screen's bar.

Each seed of ``--seeds`` draws its own phantoms (sources and strangers), other films and stranger
pairs (the two real radiographs are the same in every seed). The evidence table pools the pairs
of all seeds (its ranges are the extremes of any seed); each verdict is printed as its median over
the seeds and its worst seed.
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
import pandas as pd
from foreign_images import dicom_frames, window
from PIL import Image
from seeds import describe, parse_seeds, seed_range

from fracture_curate.geometry import (
    COPY_INLIERS,
    COPY_SHARE,
    RELATED_INLIERS,
    SCREEN_INLIERS,
    SCREEN_KEYPOINTS,
    Features,
    image_features,
    pair_evidence,
    screen_features,
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


def features_of(image: np.ndarray) -> tuple[Features, Features]:
    """An image's features for the full test and for the screen."""
    return image_features(image), screen_features(image)


def evidence(a: tuple[Features, Features], b: tuple[Features, Features]) -> dict[str, float]:
    inliers, matches, _ = pair_evidence(a[0], b[0])
    screen, screen_matches, _ = pair_evidence(a[1], b[1])
    return {
        "inliers": inliers,
        "share": inliers / max(matches, 1),
        "screen": screen,
        "screen_share": screen / max(screen_matches, 1),
    }


def measure(name: str, image: np.ndarray, films: int, rng: np.random.Generator) -> list[dict]:
    """Evidence rows for one source: its copies, its other films, copies of one other film."""
    source = features_of(image)
    rows = [
        {"source": name, "pair": "copy", "kind": kind} | evidence(features_of(copy), source)
        for kind, copy in copies(image).items()
    ]
    made = [follow_up_film(rng, image)[0] for _ in range(films)]
    features = [features_of(film) for film in made]
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
        | evidence(features_of(copy), features[0])
        for kind, copy in copies(made[0]).items()
    ]
    return rows


def measure_seed(seed: int, films: int, strangers: int, radiographs: dict) -> pd.DataFrame:
    """Evidence rows of one seed: copies and other films of every source, and strangers. Seed 0
    draws the phantoms the benchmark always drew (sources 0-3, strangers 100-139)."""
    rng = np.random.default_rng(seed)
    base = 1000 * seed
    sources = dict(radiographs)
    sources |= {
        f"phantom {k}": np.asarray(draw_phantom(np.random.default_rng(base + k), 384, k % 2 == 0))
        for k in range(4)
    }
    rows = [row for name, image in sources.items() for row in measure(name, image, films, rng)]
    phantoms = [
        features_of(
            np.asarray(draw_phantom(np.random.default_rng(base + 100 + k), 384, k % 2 == 0))
        )
        for k in range(40)
    ]
    pairs = rng.choice(len(phantoms), (strangers, 2))
    rows += [
        {"source": "phantoms", "pair": "stranger", "kind": "different phantoms"}
        | evidence(phantoms[i], phantoms[j])
        for i, j in pairs
        if i != j
    ]
    table = pd.DataFrame(rows)
    table["source"] = table["source"].str.replace(r"phantom \d+", "phantoms", regex=True)
    table["seed"] = seed
    return table


def verdicts(table: pd.DataFrame) -> dict[str, float]:
    """One seed's verdicts under the thresholds of fracture_curate.geometry."""
    called_copy = (table["inliers"] >= COPY_INLIERS) & (table["share"] >= COPY_SHARE)
    related = (table["inliers"] >= RELATED_INLIERS) & ~called_copy
    copy, film = table["pair"] == "copy", table["pair"] == "other film"
    stranger = table["pair"] == "stranger"
    result = {
        "copies": int(copy.sum()),
        "copies called copies": int((called_copy & copy).sum()),
        "other films": int(film.sum()),
        "other films called copies": int((called_copy & film).sum()),
    }
    for name in sorted(table.loc[film, "source"].unique()):
        of_source = film & (table["source"] == name)
        result[f"other films of {name} found related"] = float(related[of_source].mean())
    result["strangers"] = int(stranger.sum())
    result["strangers called copies or related"] = int(((called_copy | related) & stranger).sum())
    result["copies or related the screen drops"] = int(
        ((called_copy | related) & (table["screen"] < SCREEN_INLIERS)).sum()
    )
    result["strangers the screen passes"] = int(
        (stranger & (table["screen"] >= SCREEN_INLIERS)).sum()
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--films", type=int, default=6, help="other films made per source")
    parser.add_argument("--strangers", type=int, default=600, help="random pairs of phantoms")
    parser.add_argument("--seeds", default="0-4", help="A-B, A,B,C or A")
    args = parser.parse_args()
    seeds = parse_seeds(args.seeds)
    radiographs = {
        "chest RG1": radiograph("RG1_UNCR.dcm"),
        "ankle RG3": radiograph("RG3_UNCR.dcm"),
    }
    tables, results = [], {}
    for seed in seeds:
        start = time.perf_counter()
        table = measure_seed(seed, args.films, args.strangers, radiographs)
        tables.append(table)
        results[seed] = verdicts(table)
        copies = results[seed]
        print(
            f"seed {seed}: {copies['copies called copies']} of {copies['copies']} copies called "
            f"copies, {copies['other films called copies']} of {copies['other films']} other "
            f"films called copies, {copies['strangers called copies or related']} of "
            f"{copies['strangers']} strangers called copies or related "
            f"({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
    table = pd.concat(tables, ignore_index=True)
    span = seed_range(seeds)
    summary = table.groupby(["pair", "source"]).agg(
        pairs=("inliers", "size"),
        inliers_min=("inliers", "min"),
        inliers_max=("inliers", "max"),
        share_min=("share", "min"),
        share_max=("share", "max"),
        screen_min=("screen", "min"),
        screen_max=("screen", "max"),
        screen_share_min=("screen_share", "min"),
        screen_share_max=("screen_share", "max"),
    )
    print(f"\nevidence, pairs of {span} pooled (the ranges are the extremes of any seed):")
    print(summary.to_string(float_format=lambda v: f"{v:.2f}"))
    print(
        f"\nthresholds: copy >= {COPY_INLIERS} inliers and >= {COPY_SHARE:.0%} of matches; "
        f"related >= {RELATED_INLIERS} inliers otherwise"
    )
    print(
        f"screen: half size, {SCREEN_KEYPOINTS} keypoints, full test when >= "
        f"{SCREEN_INLIERS} inliers"
    )
    passed = (table["inliers"] >= RELATED_INLIERS) | (
        (table["inliers"] >= COPY_INLIERS) & (table["share"] >= COPY_SHARE)
    )
    print(
        "screen inliers of the pairs called copies or related: at least "
        f"{table.loc[passed, 'screen'].min():.0f}; of strangers: at most "
        f"{table.loc[table['pair'] == 'stranger', 'screen'].max():.0f}"
    )
    print(f"verdicts, median and worst seed ({span}):")
    frame = pd.DataFrame(results).T
    copies = frame["copies called copies"] / frame["copies"]
    print(f"copies called copies: {describe(copies, seeds)} (of {frame['copies'].iloc[0]:.0f})")
    print(
        "other films called copies: "
        + describe(frame["other films called copies"], seeds, False, "{:.0f}")
        + f" (of {frame['other films'].iloc[0]:.0f})"
    )
    for column in frame.columns:
        if column.startswith("other films of"):
            print(f"{column}: {describe(frame[column], seeds)}")
    print(
        "strangers called copies or related: "
        + describe(frame["strangers called copies or related"], seeds, False, "{:.0f}")
        + f" (of {frame['strangers'].median():.0f} a seed)"
    )
    for column in ("copies or related the screen drops", "strangers the screen passes"):
        print(f"{column}: " + describe(frame[column], seeds, False, "{:.0f}"))


if __name__ == "__main__":
    main()
