"""DICOM ingestion on pydicom's bundled files and on synthetic files written here."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import get_decoder
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEGLosslessSV1,
    JPEGLSLossless,
    generate_uid,
)

from medformer.data import dicom
from medformer.data.dicom import (
    DicomConfig,
    DicomDataset,
    DicomIndex,
    impute_body_part,
    ingest_dicom,
    normalize_pixels,
    resize_pad,
    tag_features,
)
from medformer.data.medmnist import DataError

# get_testdata_file(download=False) finds the files shipped inside pydicom without any network.
PYDICOM_FILES = Path(pydicom.data.get_testdata_file("CT_small.dcm", download=False)).parent
REPO = Path(__file__).resolve().parents[1]
CT5N = [f"dicomdirtests/98892001/CT5N/{n}" for n in ("2062", "2392", "2693", "3023", "3353")]
MR700 = [f"dicomdirtests/98892003/MR700/{n}" for n in ("4467", "4528", "4558", "4588", "4618", "4648", "4678")]
CR = [f"dicomdirtests/77654033/{d}" for d in ("CR1/6154", "CR2/6247", "CR3/6278")]
CT2 = [f"dicomdirtests/77654033/CT2/{n}" for n in ("17106", "17136", "17166", "17196")]
SELECTION = [
    "CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "JPEG2000.dcm",
    "JPEGLSNearLossless_08.dcm", "JPEGLSNearLossless_16.dcm", "MR_small_jpeg_ls_lossless.dcm",
    "SC_rgb_jls_lossy_line.dcm", "SC_rgb_jpeg_gdcm.dcm", "JPEG-lossy.dcm", "ExplVR_BigEnd.dcm",
    "examples_rgb_color.dcm", "examples_ybr_color.dcm", "examples_palette.dcm",
    "SC_rgb_dcmtk_+eb+cr.dcm", "SC_rgb_dcmtk_+eb+cy+n1.dcm", "rtdose.dcm", "rtplan.dcm",
    "README.txt", "crayons.icc", "no_meta.dcm", "liver_1frame.dcm", *CR, *CT2, *CT5N, *MR700,
]
JPEG_LS = ["JPEGLSNearLossless_08.dcm", "JPEGLSNearLossless_16.dcm", "MR_small_jpeg_ls_lossless.dcm", "SC_rgb_jls_lossy_line.dcm"]
CFG = DicomConfig(min_slices=5)
SALT = b"fixed test salt!"  # ingestion draws a fresh one; tests fix it to map paths back


@pytest.fixture(autouse=True)
def known_salt(monkeypatch):
    monkeypatch.setattr("medformer.data.dicom.ingest._new_salt", lambda: SALT)


def plain_paths(src: Path) -> dict[str, str]:
    """Anonymised path -> source path, for every file under src (as ingestion with SALT writes them)."""
    anon = dicom._Anonymiser(src, set(), SALT)
    rels = [p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()]
    return {anon.path(rel): rel for rel in rels}


def plain(path: str, src: Path) -> str:
    """An index/skipped path with its source path put back ("#frame3"-style parts kept)."""
    head, sep, part = path.partition("#")
    return plain_paths(src)[head] + sep + part


def write_dicom(path: Path, pixels: np.ndarray, **tags) -> Path:
    """A minimal valid single-frame 16-bit DICOM file with the given tags (keywords)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "CT"
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.PixelData = pixels.astype(np.int16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _truncated_copy(dst: Path) -> None:
    """CT_small with a new SOP instance UID and its pixel data cut short."""
    ds = pydicom.dcmread(PYDICOM_FILES / "CT_small.dcm")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(dst, enforce_file_format=True)
    data = dst.read_bytes()
    dst.write_bytes(data[: len(data) - 6000])


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    src = tmp_path_factory.mktemp("pydicom_src")
    for rel in SELECTION:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PYDICOM_FILES / rel, src / rel)
    # Sorted before MR_small.dcm, so it is decoded (and fails) before its duplicate is used.
    (src / "0_broken").mkdir()
    shutil.copy2(PYDICOM_FILES / "MR_truncated.dcm", src / "0_broken" / "MR_truncated.dcm")
    _truncated_copy(src / "0_broken" / "ct_cut.dcm")
    garbage = b"\0" * 128 + b"DICM" + np.random.default_rng(0).bytes(3000)
    (src / "0_broken" / "garbage.dcm").write_bytes(garbage)
    (src / "0_broken" / "empty.dcm").write_bytes(b"")
    cache = tmp_path_factory.mktemp("pydicom_cache")
    start = time.perf_counter()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("medformer.data.dicom.ingest._new_salt", lambda: SALT)
        index = ingest_dicom(src, cache, CFG)
    return src, cache, index, time.perf_counter() - start


def _by_path(index: DicomIndex, src: Path) -> dict:
    return {plain(r.path, src): r for r in index.records}


def _skipped(cache: Path, src: Path) -> dict[str, str]:
    with open(cache / "skipped.csv", newline="") as fh:
        return {plain(row["path"], src): row["reason"] for row in csv.DictReader(fh)}


def test_images_in_range_and_shape(ingested):
    _, cache, index, _ = ingested
    images_2d, images_3d = np.load(cache / "images_2d.npy"), np.load(cache / "images_3d.npy")
    n2 = sum(r.dim == "2d" for r in index.records)
    assert images_2d.shape == (n2, 28, 28, 3) and images_2d.dtype == np.uint8
    assert images_3d.shape == (len(index) - n2, 28, 28, 28) and images_3d.dtype == np.uint8
    for dim, shape in (("2d", (28, 28)), ("3d", (1, 28, 28, 28))):
        ds = DicomDataset(cache, dim)
        assert ds.info.flag == f"dicom{dim}"
        for i in range(len(ds)):
            item = ds[i]
            x = item["image"]
            assert x.dtype.is_floating_point and 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0
            assert tuple(x.shape[-len(shape):]) == shape and x.shape[0] in (1, 3)
            assert item["modality"] and item["body_part"] and item["dataset"] == f"dicom{dim}"
    report = json.loads((cache / "report.json").read_text())
    assert report["samples"] == len(index) >= 18
    assert report["files_used"] + report["skipped"] == report["files"] == len(SELECTION) + 4


def test_unusable_files_are_skipped_with_reasons(ingested):
    src, cache, index, _ = ingested
    skipped = _skipped(cache, src)
    for name in ("README.txt", "crayons.icc", "no_meta.dcm"):
        assert skipped[name].startswith("not_dicom")
    assert skipped["rtplan.dcm"].startswith("no_pixel_data")
    assert skipped["0_broken/MR_truncated.dcm"].startswith("truncated")
    assert skipped["0_broken/ct_cut.dcm"].split(":")[0] in ("truncated", "unreadable")
    assert skipped["MR_small_RLE.dcm"].startswith("duplicate")
    assert skipped["0_broken/garbage.dcm"].split(":")[0] in ("unreadable", "not_dicom", "no_pixel_data")
    assert skipped["0_broken/empty.dcm"].split(":")[0] in ("unreadable", "not_dicom")
    assert "MR_small.dcm" in _by_path(index, src)  # the intact copy is used despite the broken one first
    decoders = {JPEGLSLossless: JPEG_LS, JPEGLosslessSV1: ["SC_rgb_jpeg_gdcm.dcm"]}
    for syntax, names in decoders.items():
        for name in names:
            if get_decoder(syntax).is_available:
                assert name in _by_path(index, src)
            else:
                assert skipped[name].startswith("no_decoder"), skipped[name]
    assert all(reason.strip() for reason in skipped.values())
    counts = json.loads((cache / "report.json").read_text())["skipped_by_reason"]
    assert sum(counts.values()) == len(skipped)


def test_modality_body_part_and_path_scrubbing(ingested):
    src, cache, index, _ = ingested
    by_path = _by_path(index, src)
    assert by_path["CT_small.dcm"].modality == "ct"
    assert by_path["MR_small.dcm"].modality == "mri"
    assert by_path["examples_rgb_color.dcm"].modality == "ultrasound"
    assert (by_path["JPEG2000.dcm"].modality, by_path["JPEG2000.dcm"].body_part) == ("nuclear_medicine", "whole_body")
    xrays = [r for r in index.records if r.modality == "xray"]
    assert len(xrays) == 3 and {r.body_part for r in xrays} == {"spine"}  # BodyPartExamined CSPINE
    # The CR/CT2 folder is named after its PatientID; no source name is written, whatever the file.
    written = [r.path for r in index.records]
    with open(cache / "skipped.csv", newline="") as fh:
        written += [row["path"] for row in csv.DictReader(fh)]
    for path in written:
        head = path.partition("#")[0]
        assert all(re.fullmatch(r"anon-[0-9a-f]{10}(\.[a-z0-9]+)?", part) for part in head.split("/")), path
    assert all(r.path.count("/") == 3 for r in xrays)  # dicomdirtests/77654033/CR1/6154


def test_multiframe_files_and_series_become_volumes(ingested):
    src, _, index, _ = ingested
    volumes = {plain(r.path, src): r.n_slices for r in index.records if r.dim == "3d"}
    assert volumes.pop("rtdose.dcm") == 15
    assert volumes.pop("examples_ybr_color.dcm") == 30
    assert sorted(volumes.values()) == [5, 7]  # CT5N and MR700 series (min_slices=5)
    assert sum(plain(r.path, src) in CT2 for r in index.records) == 4


def _record_for(index: DicomIndex, suffix: str, src: Path):
    (rec,) = [r for r in index.records if plain(r.path, src).endswith(suffix)]
    return rec


def test_monochrome1_is_inverted(ingested):
    src, cache, index, _ = ingested
    ds = pydicom.dcmread(PYDICOM_FILES / CR[0])
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    raw = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    expected = 1.0 - np.clip((raw - (c - 0.5)) / (w - 1) + 0.5, 0, 1)
    np.testing.assert_allclose(normalize_pixels(ds)[0], expected, atol=1e-5)
    stored = np.load(cache / "images_2d.npy")[_record_for(index, "CR1/6154", src).array_index, ..., 0] / 255.0
    resized = resize_pad(np.repeat(expected[..., None], 3, -1), 28)[..., 0]
    assert np.abs(stored - resized).max() <= 1 / 255 + 1e-6


def test_voi_window_or_percentiles(ingested):
    ds = pydicom.dcmread(PYDICOM_FILES / "MR_small.dcm")
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    expected = np.clip((ds.pixel_array - (c - 0.5)) / (w - 1) + 0.5, 0, 1)
    got = normalize_pixels(ds)[0]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert not np.allclose(got, (ds.pixel_array - ds.pixel_array.min()) / np.ptp(ds.pixel_array), atol=0.02)
    ct = pydicom.dcmread(PYDICOM_FILES / "CT_small.dcm")  # no window: 0.5 / 99.5 percentiles
    hu = ct.pixel_array * float(ct.RescaleSlope) + float(ct.RescaleIntercept)
    lo, hi = np.percentile(hu, [0.5, 99.5])
    np.testing.assert_allclose(normalize_pixels(ct)[0], np.clip((hu - lo) / (hi - lo), 0, 1), atol=1e-5)


def test_ybr_is_converted_to_rgb(ingested):
    src, cache, index, _ = ingested
    images = np.load(cache / "images_2d.npy").astype(float)
    rgb = images[_record_for(index, "SC_rgb_dcmtk_+eb+cr.dcm", src).array_index]
    ybr = images[_record_for(index, "SC_rgb_dcmtk_+eb+cy+n1.dcm", src).array_index]
    assert np.abs(rgb - ybr).mean() < 4
    r, g, b = ybr[1, 14]  # the top band of this test pattern is pure red
    assert r > 200 and g < 40 and b < 40


def test_cache_is_reused_until_inputs_change(tmp_path, monkeypatch):
    src, cache = tmp_path / "src", tmp_path / "cache"
    src.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm", "README.txt"):
        shutil.copy2(PYDICOM_FILES / name, src / name)
    first = ingest_dicom(src, cache, CFG)
    assert not first.from_cache and len(first) == 2

    def no_reading(*args, **kwargs):
        raise AssertionError("cache hit must not read DICOM files")

    monkeypatch.setattr(pydicom, "dcmread", no_reading)
    start = time.perf_counter()
    again = ingest_dicom(src, cache, CFG)
    assert again.from_cache and time.perf_counter() - start < 1.0
    assert again.records == first.records and again.tag_columns == first.tag_columns
    monkeypatch.undo()
    shutil.copy2(PYDICOM_FILES / CR[0], src / "cr.dcm")
    changed = ingest_dicom(src, cache, CFG)
    assert not changed.from_cache and len(changed) == 3
    assert not ingest_dicom(src, cache, DicomConfig(size_2d=32, min_slices=5)).from_cache


def test_body_part_imputed_by_keyword_rules(tmp_path):
    pixels = np.arange(64).reshape(8, 8)
    write_dicom(tmp_path / "src" / "a.dcm", pixels, Modality="DX", ProtocolName="CHEST PA")
    write_dicom(tmp_path / "src" / "b.dcm", pixels, Modality="MR", StudyDescription="MRI BRAIN W/O")
    write_dicom(tmp_path / "src" / "c.dcm", pixels, Modality="US", SeriesDescription="misc")
    index = ingest_dicom(tmp_path / "src", tmp_path / "cache", CFG)
    found = {plain(r.path, tmp_path / "src"): (r.modality, r.body_part) for r in index.records}
    assert found == {"a.dcm": ("xray", "chest"), "b.dcm": ("mri", "head"), "c.dcm": ("ultrasound", "unknown")}
    assert impute_body_part(None, ["Knie links"], {"knee": ["knie"]}) == "knee"
    assert impute_body_part("L-SPINE", [], CFG.body_part_rules) == "spine"


def test_series_slices_ordered_by_position(tmp_path):
    # Orientation tilted about x; InstanceNumber runs against position, files are shuffled.
    cos, sin = np.cos(0.3), np.sin(0.3)
    normal = np.array([0.0, -sin, cos])
    series = generate_uid()
    for z in np.random.default_rng(0).permutation(8):
        write_dicom(
            tmp_path / "src" / f"s{z * 7 % 8}.dcm", np.full((8, 8), 100 * z),
            SeriesInstanceUID=series, InstanceNumber=int(8 - z),
            ImagePositionPatient=list(2.0 * z * normal), ImageOrientationPatient=[1, 0, 0, 0, cos, sin],
            PixelSpacing=[2.0, 2.0], WindowCenter=350, WindowWidth=800,
        )
    index = ingest_dicom(tmp_path / "src", tmp_path / "cache", DicomConfig())
    assert [(r.dim, r.n_slices) for r in index.records] == [("3d", 8)]
    volume = np.load(tmp_path / "cache" / "images_3d.npy")[0].astype(float)
    means = volume.mean(axis=(1, 2))
    assert np.all(np.diff(means) >= 0) and means[-1] - means[0] > 150


def test_empty_folder_is_one_line_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty") as err:
        ingest_dicom(tmp_path / "empty", tmp_path / "cache")
    assert "\n" not in str(err.value)


def test_tag_features_filters_and_scaling():
    values = [
        {"Modality": "CT", "KVP": 120.0, "Manufacturer": f"m{i}", "ProtocolName": "A", "SliceThickness": 1.0 + i}
        for i in range(6)
    ] + [{"Modality": "MR", "Manufacturer": "x", "ProtocolName": "A"} for _ in range(4)]
    cfg = DicomConfig(
        tags=["Modality", "KVP", "Manufacturer", "ProtocolName", "SliceThickness", "PatientName",
              "PatientID", "SOPInstanceUID", "PerformedProcedureStepStartDate", "AccessionNumber"],
        max_cardinality=5, min_fill_rate=0.7,
    )
    x, columns, decisions = tag_features(values, cfg)
    assert columns == ["Modality=CT", "Modality=MR"]
    assert x.shape == (10, 2) and x.dtype == np.float32 and x.min() >= 0 and x.max() <= 1
    assert decisions["KVP"].startswith("dropped: fill rate")  # 6/10 < 0.7
    assert decisions["SliceThickness"].startswith("dropped: fill rate")
    assert "distinct values" in decisions["Manufacturer"]  # 7 > max_cardinality 5
    assert decisions["ProtocolName"] == "dropped: constant"
    for tag in ("PatientName", "PatientID", "AccessionNumber"):
        assert "identifying" in decisions[tag]
    assert "VR UI" in decisions["SOPInstanceUID"] and "VR DA" in decisions["PerformedProcedureStepStartDate"]
    x, columns, _ = tag_features(values, DicomConfig(tags=["SliceThickness"], min_fill_rate=0.5))
    assert columns == ["SliceThickness"]
    np.testing.assert_allclose(x[:6, 0], np.linspace(0, 1, 6), atol=1e-6)
    assert np.all(x[6:, 0] == np.median(np.linspace(0, 1, 6)))  # missing -> median


def test_tag_features_of_real_files(ingested):
    _, cache, index, _ = ingested
    columns = json.loads((cache / "tag_columns.json").read_text())
    assert columns == index.tag_columns and index.tag_features.shape == (len(index), len(columns))
    assert 0.0 <= index.tag_features.min() and index.tag_features.max() <= 1.0
    assert any(c.startswith("Modality=") for c in columns) and "Rows" in columns
    assert not any("UID" in c or c.startswith("Patient") and not c.startswith("PatientPosition") for c in columns)


def test_labels_leave_out_dropped_samples(ingested):
    _, cache, index, _ = ingested
    labels = np.arange(len(index)) % 3 - 1  # -1, 0, 1, ...
    ds = DicomDataset(cache, "2d", labels=labels, task="pseudo")
    expected = [r.index for r in index.records if r.dim == "2d" and labels[r.index] >= 0]
    assert ds.sample_indices.tolist() == expected
    item = ds[0]
    assert item["task"] == "pseudo" and int(item["label"]) == labels[item["index"]]
    with pytest.raises(DataError, match="labels"):
        DicomDataset(cache, "2d", labels=np.zeros(3))


def _write_patients(src: Path) -> dict[str, str]:
    """Two synthetic patients with distinctive identifiers; one folder is named by PatientID."""
    ids = {"name_a": "Zyxwvut^Quintessa", "id_a": "ZQ4711X", "birth_a": "18990317",
           "name_b": "Plonkhoff^Hieronymus", "id_b": "HQ99887", "birth_b": "18870923"}
    series = generate_uid()
    for z in range(8):
        write_dicom(
            src / f"PID-{ids['id_a']}" / "ct" / f"{z}.dcm", np.full((16, 16), 50 * z) + np.eye(16) * 300,
            PatientName=ids["name_a"], PatientID=ids["id_a"], PatientBirthDate=ids["birth_a"],
            StudyDescription=f"CT HEAD for {ids['name_a'].split('^')[0]}", SeriesInstanceUID=series,
            InstanceNumber=z + 1, ImagePositionPatient=[0, 0, 2.0 * z], ImageOrientationPatient=[1, 0, 0, 0, 1, 0],
        )
    rng = np.random.default_rng(1)
    for i in range(6):
        write_dicom(
            src / ids["id_b"] / f"dx{i}.dcm", rng.integers(0, 4000, (16, 16)), Modality="DX",
            PatientName=ids["name_b"], PatientID=ids["id_b"], PatientBirthDate=ids["birth_b"],
            ProtocolName=f"CHEST PA {ids['id_b']}", InstitutionName="St Quintessa Hospital",
        )
    return ids


def test_no_patient_identifier_written_anywhere(tmp_path):
    from medformer.config.pseudolabel import PseudoLabelConfig, PseudoLabelDataConfig
    from medformer.runs.pseudolabel import run_pseudolabel

    src = tmp_path / "dicoms"
    ids = _write_patients(src)
    out = tmp_path / "run"
    cfg = PseudoLabelConfig(
        data=PseudoLabelDataConfig(dicom_dir=str(src), dicom=DicomConfig(min_slices=8)),
        model_overrides={"depth": 1}, ks=[2, 3], tsne_points=50, output_dir=str(out),
    )
    metrics = run_pseudolabel(cfg)
    assert metrics["n_samples"] == 7  # one CT volume + six radiographs
    index = DicomIndex.load(out / "dicom_cache")
    assert {(r.dim, r.modality, r.body_part) for r in index.records} == {("3d", "ct", "head"), ("2d", "xray", "chest")}
    needles = set(ids.values()) | {p for v in ids.values() for p in v.split("^")} | {"Quintessa", "St Quintessa"}
    # pseudo-label pretraining on the same cache: logs, checkpoints and model card stay clean too
    from pretrain.__main__ import main as pretrain_main

    pre = tmp_path / "pretrain"
    assert pretrain_main([
        "--config", str(REPO / "configs" / "pretrain" / "pseudolabel_small.yaml"), "data.datasets=[]",
        f"data.dicom_cache={out / 'dicom_cache'}", f"pseudolabel.labels={out}", "model.overrides.depth=1",
        "train.batch_size=4", "train.epochs=2", "monitor.knn_every=0", "train.progress=false",
        "pseudolabel.recluster_every=1", f"output_dir={pre}",
    ]) == 0
    card = json.loads((pre / "model_card.json").read_text())
    assert set(card["datasets"]) == {"dicom2d", "dicom3d"} and card["steps"] == 2
    files = [p for p in [*out.rglob("*"), *pre.rglob("*")] if p.is_file()]
    assert {"labels.csv", "index.csv", "report.md", "tsne.png", "tag_columns.json"} <= {p.name for p in files}
    for path in files:
        data = path.read_bytes().lower()
        for needle in needles:
            assert needle.lower().encode() not in data, f"{needle!r} found in {path.name}"


# --- hostile folders through the CLI (a fresh process: pydicom is first imported by the ingest) --

NEEDLES = ("QX987654", "Quixote", "Zebulon")
BAD_FILES = {  # pydicom's file -> what goes wrong when decoding it
    "JPEG2000-embedded-sequence-delimiter.dcm": "decoder traceback (DecompressionBombError)",
    "JPEG-lossy.dcm": "decoder traceback (12-bit JPEG Extended)",
    "SC_rgb_jpeg.dcm": "pydicom warning (implicit VR), decodes",
    "MR_truncated.dcm": "truncated pixel data",
}


def _pseudolabel_cli(src: Path, out: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "-m", "medformer", "pseudolabel",
        "--config", str(REPO / "configs" / "pseudolabel" / "dicom_example.yaml"),
        f"data.dicom_dir={src}", f"output_dir={out}", "encoder=pixels", "ks=[2]", "tsne_points=10",
        "pca_components=null", *overrides,
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    """A patient's DICOMs named by PatientID, notes named after the patient, and bad files."""
    src = tmp_path_factory.mktemp("hostile") / "dicoms"
    rng = np.random.default_rng(0)
    for i in range(4):
        write_dicom(src / f"QX987654_{i}.dcm", rng.integers(0, 2000, (16, 16)),
                    PatientID="QX987654", PatientName="Quixote^Zebulon")
    (src / "QX987654.txt").write_text("clinical notes\n")
    (src / "Quixote_Zebulon_report.txt").write_text("report\n")
    (src / "bad").mkdir()
    for name in BAD_FILES:
        shutil.copy2(PYDICOM_FILES / name, src / "bad" / name)
    _truncated_copy(src / "bad" / "ct_cut.dcm")
    out = src.parent / "run"
    return src, out, _pseudolabel_cli(src, out)


def test_no_identifier_in_any_output_or_console(hostile_run):
    _, out, proc = hostile_run
    assert proc.returncode == 0, proc.stderr
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {"skipped.csv", "index.csv", "report.json", "config.yaml", "labels.csv"} <= {p.name for p in files}
    for data, where in [(p.read_bytes(), p.name) for p in files] + [(proc.stdout.encode(), "stdout"),
                                                                    (proc.stderr.encode(), "stderr")]:
        for needle in NEEDLES:
            assert needle.lower().encode() not in data.lower(), f"{needle!r} found in {where}"
    with open(out / "dicom_cache" / "skipped.csv", newline="") as fh:
        notes = [row for row in csv.DictReader(fh) if row["path"].endswith(".txt")]
    assert len(notes) == 2 and all(r["reason"].startswith("not_dicom") for r in notes)


def test_shards_of_a_dicom_cache_carry_each_samples_domain_and_no_identifier(hostile_run, ingested, tmp_path):
    """`medformer shards source=dicom_cache`: every cached sample, with its own modality and body part
    from the tags, and none of the patient's identifiers in the shard files."""
    from medformer.cli import main as medformer_main
    from medformer.data.shards import ShardDataset, read_manifest

    _, out, proc = hostile_run
    assert proc.returncode == 0, proc.stderr
    hostile = tmp_path / "hostile_shards"
    assert medformer_main(["shards", "source=dicom_cache", f"dicom_cache={out / 'dicom_cache'}", f"output_dir={hostile}"]) == 0
    for p in hostile.rglob("*"):
        if p.is_file():
            for needle in NEEDLES:
                assert needle.lower().encode() not in p.read_bytes().lower(), f"{needle!r} found in {p.name}"
    _, cache, index, _ = ingested
    shards = tmp_path / "shards"
    assert medformer_main(["shards", "source=dicom_cache", f"dicom_cache={cache}", f"output_dir={shards}"]) == 0
    manifest = read_manifest(shards)
    assert sum(part["samples"] for part in manifest["dims"].values()) == len(index.records)
    for dim in manifest["dims"]:
        sharded, cached = ShardDataset(shards, dim), DicomDataset(cache, dim)
        assert len(sharded) == len(cached)
        for i in range(len(cached)):
            a, b = sharded[i], cached[i]
            assert torch.equal(a["image"], b["image"]) and "label" not in a
            assert (a["modality"], a["body_part"]) == (b["modality"], b["body_part"])



def test_pydicom_noise_stays_out_of_console(hostile_run):
    _, out, proc = hostile_run
    assert proc.returncode == 0, proc.stderr
    console = (proc.stdout + proc.stderr).splitlines()
    assert not [line for line in console if "Traceback" in line or "pydicom" in line or line.startswith(" ")]
    (summary,) = [line for line in console if "skipped" in line]
    assert "skipped.csv" in summary
    report = json.loads((out / "dicom_cache" / "report.json").read_text())
    with open(out / "dicom_cache" / "skipped.csv", newline="") as fh:
        reasons = [row["reason"] for row in csv.DictReader(fh)]
    assert f"{report['skipped']} skipped" in summary and len(reasons) == report["skipped"]
    kinds = {reason.split(":")[0] for reason in reasons}
    assert {"not_dicom", "truncated", "decode_failed"} <= kinds and all(":" in r for r in reasons)
    assert len([r for r in reasons if not r.startswith("not_dicom")]) >= 4  # bomb, 12-bit, 2 truncated


@pytest.mark.parametrize("folder", ["missing", "empty"])
def test_missing_or_empty_dicom_dir_writes_nothing(tmp_path, capsys, folder):
    from medformer.runs.pseudolabel import main

    if folder == "empty":
        (tmp_path / folder / "sub").mkdir(parents=True)
    out = tmp_path / "run"
    code = main([
        "--config", str(REPO / "configs" / "pseudolabel" / "dicom_example.yaml"),
        f"data.dicom_dir={tmp_path / folder}", f"output_dir={out}", f"data.dicom_cache_dir={tmp_path / 'cache'}",
    ])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and err.startswith("pseudolabel: error: DICOM folder")
    assert ("not found; set data.dicom_dir" if folder == "missing" else "is empty; put DICOM files") in err
    assert not out.exists() and not (tmp_path / "cache").exists()


def test_in_memory_batches_of_a_dicom_cache_equal_the_per_sample_items(ingested):
    """The ImageBank path (augmentation on the device) reads a DICOM cache as the per-sample path
    does: gray and RGB 2D samples in their own groups, volumes, per-sample domains and indices."""
    import torch

    from medformer.data.bank import DeviceAugment, ImageBank
    from medformer.data.batch import collate
    from medformer.data.loaders import EpochConcat, SeededTransform
    from medformer.data.transforms import eval_transform

    _, cache, index, _ = ingested
    concat = EpochConcat([SeededTransform(DicomDataset(cache, dim), eval_transform(), 0) for dim in ("2d", "3d")])
    positions = list(range(len(concat)))[::-1]
    batch = DeviceAugment({"2d": None, "3d": None})(ImageBank(concat, seed=0).__getitems__(positions))
    reference = collate([concat[p] for p in positions])
    assert batch["index"].tolist() == reference["index"].tolist()
    assert batch["inputs"].modality == reference["inputs"].modality
    assert batch["inputs"].body_part == reference["inputs"].body_part and batch["inputs"].task == reference["inputs"].task
    got = {tuple(sorted(r.tolist())): x[torch.argsort(r)] for x, r in batch["inputs"].groups}
    for x, rows in reference["inputs"].groups:
        torch.testing.assert_close(got[tuple(sorted(rows.tolist()))], x[torch.argsort(rows)])
    assert len(reference["inputs"].groups) >= 2
