"""Similarity search beyond exact: the inverted file finds what exact search finds when every
list is probed, the planted copies among 20,000 embeddings with the default probes, and says
what it missed; dedupe says when a layer cannot run."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from fracture_curate import ann
from fracture_curate.ann import SearchReport, similar_pairs
from fracture_curate.vectors import centred_unit_rows


def clustered(n: int, seed: int = 0, dim: int = 256) -> tuple[np.ndarray, set[tuple[int, int]]]:
    """Unit rows drawn around 50 centres, 1% of them near copies of another row; and those
    planted pairs."""
    rng = np.random.default_rng(seed)
    centres = rng.gamma(0.6, 1.0, size=(50, dim)) * (rng.random((50, dim)) < 0.35)
    vectors = centres[rng.integers(0, 50, n)] * rng.lognormal(0, 0.35, size=(n, dim))
    vectors += rng.gamma(0.3, 0.3, size=(n, dim))
    copies = rng.choice(n, size=n // 100, replace=False)
    originals = (copies + 1 + rng.integers(0, n - 1, len(copies))) % n  # never the copy itself
    vectors[copies] = vectors[originals] * rng.normal(1, 0.01, size=(len(copies), dim))
    planted = {(int(min(a, b)), int(max(a, b))) for a, b in zip(copies, originals, strict=True)}
    return centred_unit_rows(vectors.astype(np.float32)), planted


def pair_set(i: np.ndarray, j: np.ndarray) -> set[tuple[int, int]]:
    return set(zip(i.tolist(), j.tolist(), strict=True))


def test_probing_every_list_finds_exactly_what_exact_search_finds():
    unit, _ = clustered(3_000, seed=1)
    ei, ej, ecos, how = similar_pairs(unit, 0.9, search="exact")
    assert how == SearchReport("exact") and len(ei) > 30
    ai, aj, acos, report = similar_pairs(unit, 0.9, search="approximate", probes=10_000)
    assert pair_set(ai, aj) == pair_set(ei, ej)
    assert (ai < aj).all() and len(pair_set(ai, aj)) == len(ai)  # each pair once, i < j
    order = np.lexsort((ej, ei)), np.lexsort((aj, ai))
    np.testing.assert_allclose(acos[order[1]], ecos[order[0]], atol=1e-5)
    assert report.recall == 1.0 and report.method.startswith("approximate (IVF: ")


@pytest.mark.slow
def test_the_inverted_file_finds_the_planted_copies_among_20000_and_reports_its_recall():
    unit, planted = clustered(20_000, seed=2)
    exact = pair_set(*similar_pairs(unit, 0.95, search="exact")[:2])
    i, j, _, report = similar_pairs(unit, 0.95, search="approximate")
    found = pair_set(i, j)
    reachable = planted & exact  # a copy of a row that was itself overwritten may fall below
    assert len(reachable) >= 0.98 * len(planted)
    assert len(reachable & found) >= 0.99 * len(reachable)
    assert found <= exact  # similarities are exact: no pair is invented
    assert report.recall >= 0.99 and report.queries == ann.RECALL_QUERIES
    line = report.line()
    assert line.startswith("similarity search: approximate (IVF: ") and "sampled rows" in line


def test_auto_is_exact_up_to_the_limit(monkeypatch):
    unit, _ = clustered(500, seed=3)
    assert similar_pairs(unit, 0.95)[3].method == "exact"
    monkeypatch.setattr(ann, "EXACT_LIMIT", 100)
    assert similar_pairs(unit, 0.95)[3].method.startswith("approximate")
    with pytest.raises(ValueError, match="unknown search"):
        similar_pairs(unit, 0.95, search="fast")


def test_dedupe_without_embeddings_says_the_geometry_layer_cannot_run(tmp_path):
    from helpers import write_noise_images

    from fracture_curate.cli import app
    from fracture_curate.scan import run_scan

    write_noise_images(tmp_path / "data" / "a", ["1.png", "2.png"])
    run_scan(tmp_path / "data", tmp_path / "manifests", workers=1)
    runner = CliRunner()
    result = runner.invoke(
        app, ["dedupe", "--manifests", str(tmp_path / "manifests"), "--no-embeddings"]
    )
    assert result.exit_code == 0, result.output
    assert "with --no-embeddings it does not run" in " ".join(result.output.split())
    quiet = runner.invoke(
        app,
        ["dedupe", "--manifests", str(tmp_path / "manifests"), "--no-embeddings", "--no-geometry"],
    )
    assert quiet.exit_code == 0 and "does not run" not in quiet.output
