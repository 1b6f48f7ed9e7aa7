"""Manifests: atomic writes (a kill included), provenance, the chain and schema checks, the lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import curated_table

from fracture_curate.manifest import (
    LOCK_FILE,
    METADATA_KEY,
    ManifestError,
    atomic_path,
    check_chain,
    check_manifest,
    dataset_root,
    folder_lock,
    manifest_path,
    read_manifest,
    read_provenance,
    read_stage,
    recorded_root,
    replaced_lines,
    write_manifest,
    write_stage,
    written_before,
)


def test_manifest_paths_are_named_after_their_stage():
    assert manifest_path("m", "scan") == Path("m/scan.parquet")
    assert manifest_path("m", "embed") == Path("m/embeddings.parquet")


def test_a_manifest_says_how_it_was_made(tmp_path):
    frame = curated_table(["a", "b"], stage="scan")
    path = write_manifest(frame, tmp_path / "scan.parquet", stage="scan", params={"seed": 3})
    provenance = read_provenance(path)
    assert provenance["stage"] == "scan" and provenance["params"] == {"seed": 3}
    assert len(provenance["run_id"]) == 32 and provenance["inputs"] == {}
    assert json.loads(pq.read_schema(path).metadata[METADATA_KEY]) == provenance
    pd.testing.assert_frame_equal(read_manifest(path, stage="scan"), frame)
    again = write_manifest(frame, tmp_path / "scan.parquet", stage="scan", params={})
    assert read_provenance(again)["run_id"] != provenance["run_id"]


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("good")
    with pytest.raises(RuntimeError), atomic_path(target) as temp:
        temp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "good"
    assert [path.name for path in tmp_path.iterdir()] == ["out.txt"]
    with atomic_path(target) as temp:
        temp.write_text("new")
    assert target.read_text() == "new" and oct(target.stat().st_mode & 0o777) != "0o600"


def test_a_write_killed_with_sigkill_leaves_the_previous_file_whole(tmp_path):
    target = tmp_path / "scan.parquet"
    write_manifest(curated_table(["a"], stage="scan"), target, stage="scan", params={})
    before = target.read_bytes()
    script = (
        "import os, signal\n"
        "from fracture_curate.manifest import atomic_path\n"
        f"with atomic_path({str(target)!r}) as temp:\n"
        "    temp.write_bytes(b'PAR1 half a table')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    killed = subprocess.run([sys.executable, "-c", script], check=False)
    assert killed.returncode == -9
    assert target.read_bytes() == before
    read_manifest(target, stage="scan")


def test_only_the_stage_that_wrote_a_manifest_may_read_it_as_its_own(tmp_path):
    path = write_manifest(
        curated_table(["a"], stage="scan"), tmp_path / "x.parquet", stage="scan", params={}
    )
    with pytest.raises(ManifestError, match="written by stage 'scan', expected 'split'"):
        read_manifest(path, stage="split")
    with pytest.raises(ManifestError, match=r"does not exist\. Run `curate split` first"):
        read_manifest(tmp_path / "missing.parquet", stage="split")
    pd.DataFrame({"a": [1]}).to_parquet(tmp_path / "foreign.parquet")
    with pytest.raises(ManifestError, match="not written by fracture-curate"):
        read_manifest(tmp_path / "foreign.parquet")
    (tmp_path / "garbage.parquet").write_bytes(b"not parquet")
    with pytest.raises(ManifestError, match="not a readable Parquet file"):
        read_manifest(tmp_path / "garbage.parquet")


def test_the_whole_chain_must_be_the_one_a_manifest_was_made_from(tmp_path):
    scan = curated_table(["a", "b"], stage="scan")
    write_stage(scan, tmp_path, "scan", params={"root": "/data"}, inputs={})
    _, scan_provenance = read_stage(tmp_path, "scan")
    dedupe = curated_table(["a", "b"], stage="dedupe")
    write_stage(dedupe, tmp_path, "dedupe", params={}, inputs={"scan": scan_provenance})
    _, dedupe_provenance = read_stage(tmp_path, "dedupe")
    outliers = curated_table(["a", "b"], stage="outliers")
    write_stage(outliers, tmp_path, "outliers", params={}, inputs={"dedupe": dedupe_provenance})
    check_chain(manifest_path(tmp_path, "outliers"))
    assert recorded_root(read_provenance(manifest_path(tmp_path, "outliers"))) == Path("/data")
    write_stage(scan, tmp_path, "scan", params={}, inputs={})  # a new scan, two stages back
    with pytest.raises(ManifestError) as raised:
        read_stage(tmp_path, "outliers")
    assert str(raised.value) == (
        "dedupe.parquet was made from an older scan.parquet; run `curate dedupe` and the "
        "stages after it again"
    )
    with pytest.raises(ManifestError, match=r"run `curate dedupe` again$"):
        read_stage(tmp_path, "dedupe")
    os.remove(manifest_path(tmp_path, "scan"))  # an input no longer beside it is not checked
    read_stage(tmp_path, "outliers")


def test_a_manifest_must_hold_its_stage_s_columns_of_their_types(tmp_path):
    path = tmp_path / "dedupe.parquet"
    frame = curated_table(["a", "b"], stage="dedupe")
    write_manifest(frame.drop(columns=["is_kept", "label"]), path, stage="dedupe", params={})
    with pytest.raises(ManifestError, match=r"lacks column\(s\) label, is_kept, which"):
        read_manifest(path, stage="dedupe")
    write_manifest(frame.drop(columns=["cluster_id", "is_kept"]), path, stage="dedupe", params={})
    own = (
        r"lacks column\(s\) cluster_id, is_kept, which `curate dedupe` writes; run `curate dedupe`"
    )
    with pytest.raises(ManifestError, match=own):
        read_manifest(path, stage="dedupe")
    write_manifest(frame.assign(cluster_id=["x", "y"]), path, stage="dedupe", params={})
    with pytest.raises(ManifestError, match=r"damaged: cluster_id is \w*string, not Int64"):
        read_manifest(path, stage="dedupe")
    assert read_manifest(path, stage="dedupe", columns=["path", "status"]).shape == (2, 2)


def test_the_dataset_root_is_the_recorded_one_or_the_one_given(tmp_path):
    provenance = {"params": {"root": str(tmp_path)}}
    assert dataset_root(provenance) == tmp_path
    assert dataset_root({"params": {}}, tmp_path) == tmp_path
    with pytest.raises(ManifestError, match="does not record its dataset folder; pass --root"):
        dataset_root({"params": {}})
    with pytest.raises(ManifestError, match=r"\(recorded by the scan\) is missing; pass --root"):
        dataset_root({"params": {"root": str(tmp_path / "moved")}})
    with pytest.raises(ManifestError, match=r"\(given\) is missing"):
        dataset_root(provenance, tmp_path / "nowhere")


def write_scan_and_dedupe(folder, scan_params: dict) -> dict:
    """A one-row scan manifest and a dedupe manifest made from it; the scan's provenance."""
    write_stage(curated_table(["a"], stage="scan"), folder, "scan", params=scan_params, inputs={})
    _, provenance = read_stage(folder, "scan")
    dedupe = curated_table(["a"], stage="dedupe")
    write_stage(dedupe, folder, "dedupe", params={}, inputs={"scan": provenance})
    return provenance


def test_a_later_stage_carries_the_dataset_root_forward(tmp_path):
    provenance = write_scan_and_dedupe(tmp_path, {"root": "/data/xrays"})
    assert read_provenance(manifest_path(tmp_path, "dedupe"))["params"]["root"] == "/data/xrays"
    moved = {"root": "/data/moved"}  # a stage run with --root records the folder it was given
    write_stage(
        curated_table(["a"], "dedupe"),
        tmp_path,
        "dedupe",
        params=moved,
        inputs={"scan": provenance},
    )
    assert read_provenance(manifest_path(tmp_path, "dedupe"))["params"]["root"] == "/data/moved"


def test_one_writer_at_a_time_and_the_lock_goes_with_its_holder(tmp_path):
    with folder_lock(tmp_path):
        assert (tmp_path / LOCK_FILE).read_text() == f"fracture-curate (pid {os.getpid()})"
        busy = r"is writing to the manifests folder .*; wait"
        with pytest.raises(ManifestError, match=busy), folder_lock(tmp_path):
            pass
        with (
            pytest.raises(ManifestError, match="writing to the run folder"),
            folder_lock(tmp_path, "run folder"),
        ):
            pass
    with folder_lock(tmp_path):  # released: free again
        pass
    assert (tmp_path / LOCK_FILE).read_text() == ""


def test_what_a_manifest_records_beside_its_table(tmp_path, monkeypatch):
    frame = curated_table(["a", "b"], stage="scan").set_axis([5, 7])  # an index is not a column
    details = {"failed": {"abc": ["changed", "it changed"]}}
    monkeypatch.setenv("TZ", "Asia/Kolkata")  # a local time that is not UTC ...
    time.tzset()
    try:
        path = write_manifest(
            frame,
            tmp_path / "scan.parquet",
            stage="scan",
            params={"root": tmp_path},
            details=details,
        )
    finally:
        monkeypatch.undo()
        time.tzset()
    provenance = read_provenance(path)
    assert provenance["details"] == details and provenance["params"]["root"] == str(tmp_path)
    created = datetime.fromisoformat(provenance["created"])
    assert created.tzinfo is not None and created.utcoffset().total_seconds() == 0  # ... not used
    assert list(pq.read_schema(path).names) == list(frame.columns)
    plain = write_manifest(frame, tmp_path / "plain.parquet", stage="scan", params={})
    assert read_provenance(plain)["details"] == {}


def test_tables_are_compressed_and_only_non_float_columns_dictionary_encoded(tmp_path):
    frame = pd.DataFrame({"image_id": ["a", "b", "a"], "embedding": [[0.5, 1.5]] * 3})
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.set_column(1, "embedding", pa.array([[0.5, 1.5]] * 3, pa.list_(pa.float32(), 2)))
    path = write_manifest(table, tmp_path / "embeddings.parquet", stage="embed", params={})
    metadata = pq.ParquetFile(path).metadata.row_group(0)
    columns = {metadata.column(i).path_in_schema: metadata.column(i) for i in range(2)}
    assert all(column.compression == "ZSTD" for column in columns.values())
    assert "RLE_DICTIONARY" in columns["image_id"].encodings
    assert "RLE_DICTIONARY" not in columns["embedding.list.element"].encodings


def test_written_files_get_the_permissions_of_the_user_s_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        with atomic_path(tmp_path / "out.txt") as temp:
            temp.write_text("x")
    finally:
        os.umask(previous)
    assert (tmp_path / "out.txt").stat().st_mode & 0o777 == 0o640


def test_every_input_of_a_manifest_is_checked_even_when_another_is_gone(tmp_path):
    scan_provenance = write_scan_and_dedupe(tmp_path, {})
    embeddings = pd.DataFrame({"image_id": ["a"], "embedding": [[1.0]]})
    write_manifest(
        embeddings,
        manifest_path(tmp_path, "embed"),
        stage="embed",
        params={},
        inputs={"scan": scan_provenance},
    )
    inputs = {
        "dedupe": read_provenance(manifest_path(tmp_path, "dedupe")),
        "embed": read_provenance(manifest_path(tmp_path, "embed")),
    }
    write_stage(
        curated_table(["a"], stage="outliers"), tmp_path, "outliers", params={}, inputs=inputs
    )
    os.remove(manifest_path(tmp_path, "dedupe"))  # the first input gone ...
    write_manifest(
        embeddings, manifest_path(tmp_path, "embed"), stage="embed", params={}
    )  # ... the second rewritten
    with pytest.raises(ManifestError, match=r"outliers\.parquet was made from an older embeddings"):
        read_stage(tmp_path, "outliers")


def test_a_manifest_without_recorded_inputs_or_params_reads(tmp_path):
    table = pa.Table.from_pandas(curated_table(["a"], stage="scan"), preserve_index=False)
    metadata = {b"fracture_curate": json.dumps({"stage": "scan", "run_id": "1"}).encode()}
    pq.write_table(table.replace_schema_metadata(metadata), tmp_path / "scan.parquet")
    frame, provenance = read_stage(tmp_path, "scan")
    assert len(frame) == 1 and recorded_root(provenance) is None


def test_a_damaged_embeddings_manifest_names_its_column(tmp_path):
    path = manifest_path(tmp_path, "embed")
    write_manifest(
        pd.DataFrame({"image_id": ["a"], "embedding": ["oops"]}), path, stage="embed", params={}
    )
    with pytest.raises(
        ManifestError, match=r"damaged: embedding is \w*string, not a list of floats"
    ):
        read_manifest(path, stage="embed")
    write_manifest(pd.DataFrame({"image_id": ["a"]}), path, stage="embed", params={})
    with pytest.raises(ManifestError, match=r"lacks column\(s\) embedding"):
        read_manifest(path, stage="embed")


def test_the_columns_read_are_checked_too(tmp_path):
    path = tmp_path / "scan.parquet"
    frame = curated_table(["a"], stage="scan")
    write_manifest(frame.assign(bytes=["many"]), path, stage="scan", params={})
    with pytest.raises(ManifestError, match=r"bytes is \w*string, not Int64"):
        read_manifest(path, stage="scan", columns=["path", "bytes"])
    assert read_manifest(path, stage="scan", columns=["path", "status"]).shape == (1, 2)


def test_messages_say_what_is_missing_and_what_to_do(tmp_path):
    with pytest.raises(ManifestError) as raised:
        read_manifest(tmp_path / "x.parquet")
    assert str(raised.value) == f"{tmp_path / 'x.parquet'} does not exist."
    with pytest.raises(ManifestError) as raised:
        read_provenance(tmp_path / "x.parquet")
    assert str(raised.value) == f"{tmp_path / 'x.parquet'} does not exist"
    with pytest.raises(ManifestError) as raised:
        dataset_root({})
    assert str(raised.value) == "the manifest does not record its dataset folder; pass --root"


def test_columns_a_newer_earlier_stage_writes_send_the_user_back_to_that_stage(tmp_path):
    """A dedupe table from before the scan gained a column names the scan as the stage to rerun."""
    path = tmp_path / "dedupe.parquet"
    frame = curated_table(["a", "b"], stage="dedupe")
    write_manifest(frame.drop(columns=["colourfulness"]), path, stage="dedupe", params={})
    with pytest.raises(ManifestError, match=r"run `curate scan` and each stage after it up to"):
        read_manifest(path, stage="dedupe")


def test_check_manifest_says_what_is_missing_which_stage_wrote_it_and_checks_the_columns_asked(
    tmp_path,
):
    missing = tmp_path / "dedupe.parquet"
    with pytest.raises(ManifestError) as error:
        check_manifest(missing, stage="dedupe")
    assert str(error.value) == f"{missing} does not exist. Run `curate dedupe` first."
    with pytest.raises(ManifestError) as error:
        check_manifest(missing)
    assert str(error.value) == f"{missing} does not exist."
    scan = tmp_path / "scan.parquet"
    write_manifest(curated_table(["a"], stage="scan"), scan, stage="scan", params={})
    with pytest.raises(ManifestError) as error:
        check_manifest(scan, stage="dedupe")
    assert str(error.value) == f"{scan} was written by stage 'scan', expected 'dedupe'"
    partial = curated_table(["a"], stage="dedupe").drop(columns="is_kept")
    write_manifest(partial, missing, stage="dedupe", params={})
    assert check_manifest(missing, stage="dedupe", columns=["path", "cluster_id"])["stage"] == (
        "dedupe"
    )
    with pytest.raises(ManifestError, match="lacks column"):
        check_manifest(missing, stage="dedupe")
    embeddings = tmp_path / "embeddings.parquet"
    write_manifest(pd.DataFrame({"image_id": ["x"]}), embeddings, stage="embed", params={})
    with pytest.raises(ManifestError, match=r"lacks column\(s\) embedding"):
        check_manifest(embeddings, stage="embed")


def test_a_stage_written_again_says_what_it_replaced_and_what_is_now_stale(tmp_path):
    assert written_before(tmp_path, "scan") is None
    assert replaced_lines(tmp_path, "scan", None) == []
    scan = curated_table(["a", "b"], stage="scan")
    write_stage(scan, tmp_path, "scan", params={}, inputs={})
    created = read_provenance(manifest_path(tmp_path, "scan"))["created"]
    before = written_before(tmp_path, "scan")
    assert before == f"written {created}"
    assert replaced_lines(tmp_path, "scan", before) == [
        (f"replaced the scan.parquet written {created}", False)
    ]
    _, provenance = read_stage(tmp_path, "scan")
    dedupe = curated_table(["a", "b"], stage="dedupe")
    write_stage(dedupe, tmp_path, "dedupe", params={}, inputs={"scan": provenance})
    write_stage(scan, tmp_path, "scan", params={}, inputs={})
    assert replaced_lines(tmp_path, "scan", before)[1] == (
        "dedupe.parquet was made from the old one: run `curate dedupe` again",
        True,
    )
    manifest_path(tmp_path, "embed").touch()  # the next stage of all counts too
    assert replaced_lines(tmp_path, "scan", before)[1] == (
        "embeddings.parquet, dedupe.parquet were made from the old one: run `curate embed`, "
        "`curate dedupe` again",
        True,
    )
    manifest_path(tmp_path, "split").write_bytes(b"not parquet")
    assert written_before(tmp_path, "split") == "that could not be read"
    assert replaced_lines(tmp_path, "split", "that could not be read")[0] == (
        "replaced the split.parquet that could not be read",
        False,
    )
    table = pa.table({"x": [1]}).replace_schema_metadata({METADATA_KEY: json.dumps({})})
    pq.write_table(table, manifest_path(tmp_path, "outliers"))  # provenance without a date
    assert written_before(tmp_path, "outliers") == "written at an unknown time"
