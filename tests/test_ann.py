"""Similarity search beyond exact: the inverted file finds what exact search finds when every
list is probed (pairs above a threshold, and each row's nearest neighbours), the planted copies
among 20,000 embeddings with the default probes, and says what it missed; dedupe says when a
layer cannot run."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from fracture_curate import ann
from fracture_curate.ann import SearchReport, neighbour_pairs, similar_pairs
from fracture_curate.vectors import UnitRows, centred_unit_rows, nearest_neighbours


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


def exact_neighbours(unit: np.ndarray, rows: np.ndarray, k: int) -> list[set[int]]:
    """Each of ``rows``' k nearest other rows, by brute force."""
    similarity = unit[rows] @ unit.T
    similarity[np.arange(len(rows)), rows] = -np.inf
    return [set(np.argsort(-line, kind="stable")[:k].tolist()) for line in similarity]


def test_exact_neighbours_of_sampled_rows_are_the_brute_force_ones(monkeypatch):
    unit, _ = clustered(1_500, seed=9)
    monkeypatch.setattr("fracture_curate.vectors.TILE_ELEMENTS", 50 * 300)  # several tiles
    queries = np.array([0, 7, 499, 1_499])
    ids, cosines = ann.exact_neighbours(UnitRows(unit), queries, 6)
    assert [set(row.tolist()) for row in ids] == exact_neighbours(unit, queries, 6)
    np.testing.assert_allclose(
        cosines, np.take_along_axis(unit[queries] @ unit.T, ids, 1), atol=1e-6
    )


def test_probing_every_list_finds_the_exact_nearest_neighbours():
    unit, _ = clustered(3_000, seed=4)
    exact = neighbour_pairs(unit, 8, -1.0, search="exact")
    assert exact[3] == SearchReport("exact", purpose="geometry neighbours")
    i, j, cosine, report = neighbour_pairs(unit, 8, -1.0, search="approximate", probes=10_000)
    expected, found = pair_set(*exact[:2]), pair_set(i, j)
    assert (i < j).all() and len(found) == len(i)
    assert len(found & expected) >= 0.999 * len(expected)
    np.testing.assert_allclose(cosine, np.einsum("ij,ij->i", unit[i], unit[j]), atol=2e-3)
    assert report.unit == "neighbours" and report.recall >= 0.999
    assert "float16 codes" in report.method and "neighbours exact search finds" in report.line()


def test_both_searches_on_one_partition_find_what_exact_search_finds(monkeypatch):
    """As dedupe runs them: the centred rows' pairs, stored in the lists of a partition of the
    plain rows, and the plain rows' neighbours, queried in blocks of rows grouped by nearest
    list. With every list probed each equals exact search; the partition is built on first use,
    once, and never for exact searches."""
    monkeypatch.setattr(ann, "QUERY_CHUNK", 700)
    plain, _ = clustered(3_000, seed=7)
    plain_rows, centred = UnitRows(plain), UnitRows.centred(plain)
    partition = ann.Partition(plain_rows, probes=10_000)
    similar_pairs(centred, 0.9, search="exact", partition=partition)
    neighbour_pairs(plain_rows, 8, -1.0, search="exact", partition=partition)
    assert "quantizer" not in vars(partition)  # no k-means for exact searches

    ei, ej, _, _ = similar_pairs(centred, 0.9, search="exact")
    ai, aj, _, report = similar_pairs(centred, 0.9, search="approximate", partition=partition)
    quantizer = partition.quantizer
    assert len(ei) > 30 and pair_set(ai, aj) == pair_set(ei, ej) and report.recall == 1.0
    expected = pair_set(*neighbour_pairs(plain_rows, 8, -1.0, search="exact")[:2])
    i, j, _, how = neighbour_pairs(plain_rows, 8, -1.0, search="approximate", partition=partition)
    assert len(pair_set(i, j) & expected) >= 0.999 * len(expected) and how.recall >= 0.999
    assert partition.quantizer is quantizer and f"{partition.lists:,} lists" in how.method
    blocks = list(partition.query_blocks())
    order = np.concatenate(blocks)
    assert len(blocks) == 5 and sorted(order.tolist()) == list(range(len(plain)))
    assert (np.diff(partition.probed[1][order, 0]) >= 0).all()  # by nearest list


def test_each_search_probes_its_own_share_of_a_shared_partition():
    """The neighbours probe more lists than the pairs on one partition: a search that probes 2 of
    the 12 lists found for each row finds what it finds on a partition of 2, and 12 find more."""
    plain, _ = clustered(3_000, seed=9)
    rows = UnitRows(plain)
    shared, own = ann.Partition(rows, probes=12), ann.Partition(rows, probes=2)
    few = neighbour_pairs(rows, 8, -1.0, search="approximate", probes=2, partition=shared)
    alone = neighbour_pairs(rows, 8, -1.0, search="approximate", probes=2, partition=own)
    assert "2 probed" in few[3].method and pair_set(*few[:2]) == pair_set(*alone[:2])
    wide = neighbour_pairs(rows, 8, -1.0, search="approximate", probes=12, partition=shared)
    assert "12 probed" in wide[3].method and wide[3].recall > few[3].recall


def test_codes_in_the_lists_of_other_rows_score_their_own_cosines():
    """The pair search stores centred rows in the lists of the plain rows' partition: the codes'
    similarities are the centred cosines (within a quarter of the margin the candidates are
    taken at), not shifted by the plain rows' list centres."""
    rng = np.random.default_rng(8)
    raw = rng.gamma(0.6, 1.0, size=(3_000, 128)).astype(np.float32)  # non-negative, like ReLU
    centred = UnitRows.centred(raw)
    index = ann.InvertedFile.build(centred, ann.Partition(UnitRows(raw), probes=8), probes=8)
    every = np.arange(len(raw))
    limits, scores, found = index.range_search(every, centred.take(every), -2.0)
    queries = np.repeat(np.arange(len(raw)), np.diff(limits).astype(np.int64))
    exact = centred.cosines(queries, found)
    assert len(found) > 10 * len(raw)
    assert np.abs(scores - exact).max() <= ann.CODE_MARGIN / 4


@pytest.mark.slow
def test_approximate_neighbours_hold_the_planted_copies_and_report_their_true_recall():
    """Among 20,000 rows, the default probes find each planted copy among its source's
    neighbours; the recall the search reports is the one measured here by brute force."""
    unit, planted = clustered(20_000, seed=5)
    i, j, _, report = neighbour_pairs(UnitRows(unit), 16, 0.0, search="approximate")
    assert planted <= pair_set(i, j)
    queries = np.sort(np.random.default_rng(1).choice(len(unit), ann.RECALL_QUERIES, replace=False))
    truth = exact_neighbours(unit, queries, 16)
    found = [set() for _ in queries]
    position = {int(q): n for n, q in enumerate(queries)}
    for a, b in zip(i.tolist(), j.tolist(), strict=True):
        for query, other in ((a, b), (b, a)):
            if query in position:
                found[position[query]].add(other)
    hits = sum(len(t & f) for t, f in zip(truth, found, strict=True))
    assert report.queries == ann.RECALL_QUERIES and report.exact_pairs == 16 * len(queries)
    assert 0.98 <= report.recall <= hits / report.exact_pairs  # found from either end counts


def test_exact_neighbours_search_is_the_tiled_one():
    unit, _ = clustered(400, seed=6)
    expected = nearest_neighbours(unit, 5, 0.1)
    found = neighbour_pairs(unit, 5, 0.1)
    for a, b in zip(expected, found[:3], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_auto_is_exact_up_to_the_limit(monkeypatch):
    unit, _ = clustered(500, seed=3)
    assert similar_pairs(unit, 0.95)[3].method == "exact"
    monkeypatch.setattr(ann, "EXACT_LIMIT", 100)
    assert similar_pairs(unit, 0.95)[3].method.startswith("approximate")
    with pytest.raises(ValueError, match="unknown search"):
        similar_pairs(unit, 0.95, search="fast")


def test_dedupe_without_embeddings_says_what_the_geometry_layer_cannot_do(tmp_path):
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
    assert "with --no-embeddings it only checks the pHash matches" in " ".join(
        result.output.split()
    )
    quiet = runner.invoke(
        app,
        ["dedupe", "--manifests", str(tmp_path / "manifests"), "--no-embeddings", "--no-geometry"],
    )
    assert quiet.exit_code == 0 and "only checks" not in quiet.output


def test_auto_finds_the_geometry_neighbours_exactly_up_to_their_own_limit(monkeypatch):
    """The neighbours stay exact past the pair search's limit (the inverted file lost a quarter
    of them on look-alike radiographs), and go approximate past their own."""
    unit, _ = clustered(500, seed=7)
    monkeypatch.setattr(ann, "EXACT_LIMIT", 100)
    assert neighbour_pairs(unit, 4, 0.0)[3].method == "exact"
    monkeypatch.setattr(ann, "NEIGHBOUR_EXACT_LIMIT", 100)
    assert neighbour_pairs(unit, 4, 0.0)[3].method.startswith("approximate")
