"""Issue 14: sources as users have them. CSV paths as written (absolute, relative, ``--root``), an
iNaturalist export and a Darwin Core Archive (folder and .zip) built from real iNaturalist photos
(``shared/data/inat-plants-dev``), and the taxonomy they carry (the samples' ``taxonomy``, the
warehouse's ``taxa``, ``status``'s ``ranks``).

On real parts: a temporary project on a real embedded MongoDB and a real DuckDB warehouse, the
command through Typer's CliRunner; the archive is read by python-dwca-reader.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import shutil
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import SHARED_DATA, make_image
from fieldguide.cli import app
from fieldguide.errors import IngestError
from fieldguide.platform import store
from fieldguide.platform.ingest import ingest
from fieldguide.platform.status import project_status

INAT = SHARED_DATA / "inat-plants-dev"
SPECIES = ("Adelinia_grandis", "Adenocaulon_bicolor", "Bellis_perennis")  # 2 families, 3 genera
TAXA = {  # the class tree the sources below give, per class: (rank, name) coarse to fine
    "Adelinia grandis": [("kingdom", "Plantae"), ("family", "Boraginaceae"), ("genus", "Adelinia"),
                         ("species", "Adelinia grandis")],
    "Adenocaulon bicolor": [("kingdom", "Plantae"), ("family", "Asteraceae"), ("genus", "Adenocaulon"),
                            ("species", "Adenocaulon bicolor")],
    "Bellis perennis": [("kingdom", "Plantae"), ("family", "Asteraceae"), ("genus", "Bellis"),
                        ("species", "Bellis perennis")],
}


@pytest.fixture
def runner():
    return CliRunner()


def _cli(runner, project, *args):
    result = runner.invoke(app, ["--project", str(project.root), *map(str, args)])
    assert not isinstance(result.exception, Exception), result.exception  # a traceback, a bug
    return result


def _write_csv(path: Path, header: list[str], rows: list[list], delimiter: str = ",") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f, delimiter=delimiter, lineterminator="\n").writerows([header, *rows])
    return path


def _taxa(project) -> dict[str, list[tuple]]:
    df = store.warehouse(project).query(
        "SELECT class, rank, name, depth, parent_rank, parent_name FROM taxa ORDER BY class, depth")
    out: dict[str, list[tuple]] = {}
    for c, rank, name, depth, prank, pname in df.itertuples(index=False):
        out.setdefault(c, []).append((rank, name, depth, None if prank is None or prank != prank else prank,
                                      None if pname is None or pname != pname else pname))
    return out


def _expected_taxa(classes=TAXA) -> dict[str, list[tuple]]:
    out = {}
    for label, lineage in classes.items():
        parents = [(None, None), *lineage[:-1]]
        out[label] = [(r, n, d, *parents[d]) for d, (r, n) in enumerate(lineage)]
    return out


# ---- real observations -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def plants() -> dict[str, list[dict]]:
    """Species -> its first 5 rows of inat-plants-dev's metadata.csv (real photos, dates, taxa)."""
    with open(INAT / "metadata.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return {sp: [r for r in rows if r["species"] == sp][:5] for sp in SPECIES}


@pytest.fixture
def observations(tmp_path, plants) -> dict:
    """12 observations (3 species x 4) with their photos copied into ``images/`` named by id.

    The first Adelinia observation has two photos (``<id>_1``, ``<id>_2``: its 5th row's photo is
    the second); Adenocaulon's 5th row lists a photo that is not there, Bellis's 5th lists none.
    """
    images = tmp_path / "images"
    images.mkdir()
    obs = []
    for sp in SPECIES:
        for i, row in enumerate(plants[sp][:4]):
            obs.append({**row, "photos": [INAT / row["path"]], "n": len(obs)})
    first = obs[0]
    first["photos"].append(INAT / plants["Adelinia_grandis"][4]["path"])
    for o in obs:
        names = [f"{o['inat_id']}.jpg"] if len(o["photos"]) == 1 else \
            [f"{o['inat_id']}_{k}.jpg" for k in range(1, len(o["photos"]) + 1)]
        for name, photo in zip(names, o["photos"]):
            shutil.copy(photo, images / name)
    missing, no_photo = plants["Adenocaulon_bicolor"][4], plants["Bellis_perennis"][4]
    return {"images": images, "obs": obs, "missing": missing, "no_photo": no_photo}


def _lat_lon(n: int) -> tuple[float, float]:
    return round(36.95 + n / 100, 4), round(-122.05 - n / 100, 4)


def _inat_export(path: Path, data: dict) -> Path:
    """An iNaturalist observation export (its columns, a subset) for ``observations``."""
    header = ["id", "observed_on", "time_observed_at", "user_login", "quality_grade", "url", "image_url",
              "latitude", "longitude", "scientific_name", "common_name", "taxon_id", "taxon_kingdom_name",
              "taxon_family_name", "taxon_genus_name", "taxon_species_name"]

    def row(r, n, url):
        lat, lon = _lat_lon(n)
        when = f"{r['observed_on']} 19:23:00 UTC" if n == 1 else ""
        return [r["inat_id"], r["observed_on"], when, f"user{n % 3}", "research", r["observation_url"], url,
                lat, lon, r["scientific_name"], r["common_name"], 100 + n, "Plantae", r["family"], r["genus"],
                r["scientific_name"]]

    rows = [row(o, o["n"], f"https://static.inaturalist.org/photos/{o['inat_id']}/medium.jpg")
            for o in data["obs"]]
    rows.append(row(data["missing"], 12, "https://static.inaturalist.org/photos/1/medium.jpg"))
    rows.append(row(data["no_photo"], 13, ""))
    return _write_csv(path, header, rows)


def _check_observation_samples(ds, data: dict, timed: bool) -> None:
    """What both observation formats give: labels, dates, places, taxonomy, splits (``timed``: the
    second observation's time of day is in the source)."""
    assert ds.count_values("ground_truth.label") == {"Adelinia grandis": 5, "Adenocaulon bicolor": 4,
                                                     "Bellis perennis": 4}
    assert ds.count_sample_tags() == {"train": 13}
    assert len(ds.distinct("observation_id")) == 12
    by_obs = {}
    for s in ds:
        by_obs.setdefault(s.observation_id, []).append(s)
    for o in data["obs"]:
        samples = by_obs[o["inat_id"]]
        assert len(samples) == len(o["photos"])
        for s in samples:
            assert s.ground_truth.label == o["scientific_name"]
            day = dt.datetime.fromisoformat(o["observed_on"])
            assert s.observed_at == (day.replace(hour=19, minute=23) if timed and o["n"] == 1 else day)
            lat, lon = _lat_lon(o["n"])
            assert s.location.point == [lon, lat]
            assert list(s.taxonomy.items()) == TAXA[o["scientific_name"]]  # coarse to fine
            assert s.metadata.width > 0 and len(s.filehash) == 40
    # the two photos of one observation: two samples, one observation_id, one split
    two = by_obs[data["obs"][0]["inat_id"]]
    assert len(two) == 2 and len({s.filehash for s in two}) == 2
    assert [s.tags for s in two] == [["train"], ["train"]]
    assert sorted(Path(s.filepath).name for s in two) == [f"{data['obs'][0]['inat_id']}_{k}.jpg" for k in (1, 2)]


# ---- 1. CSV paths as users write them ----------------------------------------------------------
def test_csv_of_absolute_paths_elsewhere_ingests_every_readable_image(project, tmp_path, plants):
    manifests = tmp_path / "manifests"
    text = tmp_path / "elsewhere" / "notes.jpg"
    text.parent.mkdir()
    text.write_text("not an image")
    real = [INAT / r["path"] for sp in SPECIES for r in plants[sp][:2]]
    rows = [[str(p), p.parent.name] for p in real]
    rows += [[str(tmp_path / "elsewhere" / "gone.jpg"), "x"], [str(text), "x"], [str(tmp_path / "elsewhere"), "x"]]
    manifest = _write_csv(manifests / "m.csv", ["filepath", "label"], rows)
    report = ingest(project, manifest, fmt="csv")
    assert report.added == 6
    assert {r.path: r.reason for r in report.rejects} == {
        str(tmp_path / "elsewhere" / "gone.jpg"): "file does not exist",
        str(text): "not an image (cannot identify the format)",
        str(tmp_path / "elsewhere"): "not a file",
    }
    ds = store.dataset(project, create=False)
    assert sorted(ds.values("filepath")) == sorted(str(p) for p in real)  # as written, nowhere near the CSV
    assert ds.count_values("ground_truth.label") == {sp: 2 for sp in SPECIES}


def test_unreadable_file_is_a_reject(project, tmp_path):
    """A file without read permission (root loses its override for this run) is one reject line."""
    import subprocess
    import sys

    make_image(tmp_path / "a.jpg", (1, 2, 3))
    locked = make_image(tmp_path / "locked.jpg", (1, 2, 3), seed=1)
    manifest = _write_csv(tmp_path / "m.csv", ["filepath", "label"], [["a.jpg", "x"], ["locked.jpg", "x"]])
    caps = "-dac_override,-dac_read_search"
    as_user = ["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}", "--"] if os.geteuid() == 0 else []
    locked.chmod(0)
    try:
        done = subprocess.run([*as_user, sys.executable, "-m", "fieldguide.cli", "--project", str(project.root),
                               "ingest", str(manifest), "--format", "csv", "--json"],
                              capture_output=True, text=True, timeout=300)
    finally:
        locked.chmod(0o644)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["added"] == 1
    rejects = (Path(json.loads(done.stdout)["rejects_report"])).read_text().splitlines()
    assert f"{locked},cannot read the file (permission denied),reject" in rejects


def test_too_large_images_are_rejects(project, tmp_path, monkeypatch):
    """(A file without read permission: test_unreadable_file_is_a_reject, for real.)"""
    from PIL import Image

    small = make_image(tmp_path / "small.jpg", (1, 2, 3), size=8)
    big = make_image(tmp_path / "big.jpg", (1, 2, 3), size=64)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 is over twice that: a decompression bomb
    manifest = _write_csv(tmp_path / "m.csv", ["filepath", "label"], [[p.name, "x"] for p in (small, big)])
    report = ingest(project, manifest, fmt="csv")
    assert report.added == 1
    reasons = {r.path: r.reason for r in report.rejects}
    assert reasons[str(big)].startswith("image too large (Image size (4096 pixels) exceeds limit")
    assert store.dataset(project, create=False).values("filepath") == [str(small)]


def test_csv_relative_paths_resolve_against_its_folder_or_root(runner, project, tmp_path, plants):
    """Relative to the CSV's folder (``..`` included); with --root, relative to DIR (the votes too)."""
    photos = tmp_path / "photos"
    make_image(photos / "a.jpg", (200, 40, 40), seed=1)
    make_image(photos / "sub" / "b.jpg", (40, 200, 40), seed=2)
    beside = _write_csv(tmp_path / "lists" / "beside.csv", ["filepath", "label"],
                        [["../photos/a.jpg", "red"], ["../photos/sub/b.jpg", "green"], ["photos/a.jpg", "red"]])
    report = ingest(project, beside, fmt="csv")
    assert report.added == 2
    # "photos/a.jpg" is relative to the CSV's folder, where there is no such file
    assert [(r.path, r.reason) for r in report.rejects] == [
        (str(tmp_path / "lists" / "photos" / "a.jpg"), "file does not exist")]
    ds = store.dataset(project, create=False)
    assert sorted(ds.values("filepath")) == [str(photos / "a.jpg"), str(photos / "sub" / "b.jpg")]

    # --root: paths relative to the collection, the CSV anywhere (here: the real inat-plants-dev)
    rel = [r["path"].removeprefix("images/") for sp in SPECIES for r in plants[sp][:2]]
    rooted = _write_csv(tmp_path / "lists" / "rooted.csv", ["filepath", "label"],
                        [[p, p.split("/")[0]] for p in rel])
    votes = _write_csv(tmp_path / "lists" / "votes.csv", ["filepath", "annotator", "label"],
                       [[rel[0], "ann", "Adelinia_grandis"], [rel[2], "ann", "Bellis_perennis"]])
    without = ingest(project, rooted, fmt="csv")
    assert (without.added, len(without.rejects)) == (0, 6)
    assert {r.reason for r in without.rejects} == {"file does not exist"}
    result = _cli(runner, project, "ingest", rooted, "--format", "csv", "--root", INAT / "images",
                  "--votes", votes, "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert (out["added"], out["rejected"], out["votes_added"]) == (6, 0, 2)
    paths = set(ds.values("filepath"))
    assert {str(INAT / "images" / p) for p in rel} <= paths and len(paths) == 8
    voted = ds.match({"filepath": str(INAT / "images" / rel[2])}).first()
    assert [(v.annotator, v.label) for v in voted.votes.classifications] == [("ann", "Bellis_perennis")]


def test_csv_ranks_observation_ids_and_one_split_per_observation(runner, project, tmp_path, plants):
    """inat-plants-dev's own metadata.csv as a manifest: --ranks family,genus above the label."""
    header = ["path", "species", "scientific_name", "common_name", "family", "genus", "observed_on", "inat_id",
              "split"]
    rows = [[r[c] for c in header[:-1]] + ["test" if i == 3 else "train"]
            for sp in SPECIES for i, r in enumerate(plants[sp][:4])]
    extra = plants["Bellis_perennis"][4]  # a second photo of Bellis's 4th observation, given another split
    rows.append([extra[c] for c in header[:-2]] + [plants["Bellis_perennis"][3]["inat_id"], "train"])
    manifest = _write_csv(tmp_path / "metadata.csv", header, rows)
    result = _cli(runner, project, "ingest", manifest, "--format", "csv", "--root", INAT,
                  "--filepath-column", "path", "--label-column", "scientific_name", "--ranks", "family,genus",
                  "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert (out["added"], out["rejected"]) == (11, 2)
    bellis = plants["Bellis_perennis"]
    report_rows = store.warehouse(project).query("SELECT path, reason FROM rejects WHERE run_id = ?",
                                                 [out["run_id"]])
    expected = (f"observation {bellis[3]['inat_id']}: its photos are in different splits (test, train); "
                "give them one split")
    assert dict(report_rows.values.tolist()) == {str(INAT / bellis[3]["path"]): expected,
                                                 str(INAT / extra["path"]): expected}
    ds = store.dataset(project, create=False)
    assert ds.count_sample_tags() == {"train": 9, "test": 2}
    s = ds.match({"observation_id": plants["Adelinia_grandis"][0]["inat_id"]}).first()
    assert list(s.taxonomy.items()) == [("family", "Boraginaceae"), ("genus", "Adelinia"),
                                        ("species", "Adelinia grandis")]
    assert s.ground_truth.label == "Adelinia grandis"
    assert s.observed_at == dt.datetime.fromisoformat(plants["Adelinia_grandis"][0]["observed_on"])
    assert (s.species, s.common_name) == ("Adelinia_grandis", "pacific hound's tongue")
    assert not s.has_field("family")  # a rank column is in the taxonomy, not a field of its own
    tree = {c: [(r, n) for r, n, *_ in rows] for c, rows in _taxa(project).items()}
    assert tree == {c: lineage[1:] for c, lineage in TAXA.items()}
    info = project_status(project)
    assert info["ranks"] == {"family": 2, "genus": 3, "species": 3}


# ---- 2. an iNaturalist export ----------------------------------------------------------------
def test_inat_export_ingests_every_photo_with_date_place_and_taxonomy(runner, project, tmp_path, observations):
    shutil.copy(INAT / observations["obs"][5]["path"], observations["images"] / "IMG_0001.jpg")  # no observation's
    export = _inat_export(tmp_path / "observations-123.csv", observations)
    images = observations["images"]
    result = _cli(runner, project, "ingest", export, "--format", "inat", "--images", images)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "added 13, already in the store 0, rejected 2, notices 1"
    report = store.warehouse(project).query("SELECT path, reason, kind FROM rejects ORDER BY path")
    missing, no_photo = observations["missing"]["inat_id"], observations["no_photo"]["inat_id"]
    assert report.values.tolist() == [
        [str(images), "1 image(s) named after no observation id of the source, not ingested (IMG_0001.jpg)",
         "notice"],
        [f"{export}:14", f"observation {missing}: photo missing (no file {missing}.* or {missing}_<k>.* in "
                         f"{images}; the source lists 1)", "reject"],
        [f"{export}:15", f"observation {no_photo}: no photo (the source lists none, and no file {no_photo}.* "
                         f"or {no_photo}_<k>.* in {images})", "reject"],
    ]
    ds = store.dataset(project, create=False)
    _check_observation_samples(ds, observations, timed=True)
    first = observations["obs"][1]
    s = ds.match({"observation_id": first["inat_id"]}).first()
    assert s.observed_at == dt.datetime.fromisoformat(first["observed_on"]).replace(hour=19, minute=23)
    assert (s.observer, s.quality_grade, s.common_name, s.taxon_id) == ("user1", "research", first["common_name"], 101)
    assert s.url == first["observation_url"]
    assert s.image_url == f"https://static.inaturalist.org/photos/{first['inat_id']}/medium.jpg"
    assert not s.has_field("scientific_name")  # it is the label
    assert _taxa(project) == _expected_taxa()

    result = _cli(runner, project, "status", "--json")
    assert json.loads(result.stdout)["ranks"] == {"kingdom": 1, "family": 2, "genus": 3, "species": 3}
    assert "ranks    kingdom 1, family 2, genus 3, species 3" in _cli(runner, project, "status").stdout.splitlines()
    again = ingest(project, export, fmt="inat", images=images)
    assert (again.added, again.existing, len(again.rejects)) == (0, 13, 2)
    assert _taxa(project) == _expected_taxa()  # the class tree is written again, not twice


def test_inat_label_rank_picks_a_taxon_column(project, tmp_path, observations):
    export = _inat_export(tmp_path / "export.csv", observations)
    report = ingest(project, export, fmt="inat", images=observations["images"], label_rank="genus")
    assert report.added == 13
    ds = store.dataset(project, create=False)
    assert ds.count_values("ground_truth.label") == {"Adelinia": 5, "Adenocaulon": 4, "Bellis": 4}
    s = ds.match({"observation_id": observations["obs"][0]["inat_id"]}).first()
    assert s.scientific_name == "Adelinia grandis"  # not the label now: a field
    assert s.taxonomy == dict(TAXA["Adelinia grandis"])  # the sample keeps every rank
    assert {c: [r for r, *_ in rows] for c, rows in _taxa(project).items()} == {
        g: ["kingdom", "family", "genus"] for g in ("Adelinia", "Adenocaulon", "Bellis")}
    with pytest.raises(IngestError, match=r"no column 'taxon_order_name' for --label-rank order "
                                          r"\(ranks in the export: kingdom, family, genus, species\)"):
        ingest(project, export, fmt="inat", images=observations["images"], label_rank="order")
    with pytest.raises(IngestError, match=r"--ranks does not apply to --format inat \(it is for csv\)"):
        ingest(project, export, fmt="inat", ranks=["family"])


# ---- 2. a Darwin Core Archive ----------------------------------------------------------------
_META = """<?xml version="1.0" encoding="UTF-8"?>
<archive xmlns="http://rs.tdwg.org/dwc/text/">
  <core encoding="UTF-8" fieldsTerminatedBy="\\t" linesTerminatedBy="\\n" fieldsEnclosedBy=""
        ignoreHeaderLines="1" rowType="http://rs.tdwg.org/dwc/terms/Occurrence">
    <files><location>occurrence.txt</location></files>
    <id index="0"/>
{core}
  </core>
  <extension encoding="UTF-8" fieldsTerminatedBy="\\t" linesTerminatedBy="\\n" fieldsEnclosedBy=""
             ignoreHeaderLines="1" rowType="http://rs.gbif.org/terms/1.0/Multimedia">
    <files><location>multimedia.txt</location></files>
    <coreid index="0"/>
{media}
  </extension>
</archive>
"""
DWC = "http://rs.tdwg.org/dwc/terms/"
DC = "http://purl.org/dc/terms/"
CORE_TERMS = [DWC + t for t in ("occurrenceID", "basisOfRecord", "eventDate", "decimalLatitude",
                                "decimalLongitude", "scientificName", "taxonRank", "kingdom", "family", "genus",
                                "specificEpithet", "recordedBy", "identifiedBy", "vernacularName")]
MEDIA_TERMS = [DC + t for t in ("type", "format", "identifier", "license", "creator")]


def _dwca(folder: Path, data: dict) -> Path:
    """meta.xml, occurrence.txt and multimedia.txt (Simple Multimedia) for ``observations``."""
    def fields(terms):
        return "\n".join(f'    <field index="{i}" term="{t}"/>' for i, t in enumerate(terms, start=1))

    folder.mkdir(parents=True)
    (folder / "meta.xml").write_text(_META.format(core=fields(CORE_TERMS), media=fields(MEDIA_TERMS)))
    core, media = [], []

    def add(r, n, photos):
        lat, lon = _lat_lon(n)
        genus, epithet = r["scientific_name"].split(" ", 1)
        core.append([r["inat_id"], f"inat:{r['inat_id']}", "HumanObservation", r["observed_on"], lat, lon,
                     r["scientific_name"], "species", "Plantae", r["family"], genus, epithet, f"user{n % 3}",
                     "ident1", r["common_name"]])
        for k in range(1, photos + 1):
            media.append([r["inat_id"], "StillImage", "image/jpeg",
                          f"https://static.inaturalist.org/photos/{r['inat_id']}/{k}.jpg", "CC-BY-NC",
                          f"user{n % 3}"])

    for o in data["obs"]:
        add(o, o["n"], len(o["photos"]))
    add(data["missing"], 12, 1)
    add(data["no_photo"], 13, 0)
    _write_csv(folder / "occurrence.txt", ["id", *(t.rsplit("/", 1)[1] for t in CORE_TERMS)], core, "\t")
    _write_csv(folder / "multimedia.txt", ["coreid", *(t.rsplit("/", 1)[1] for t in MEDIA_TERMS)], media, "\t")
    return folder


@pytest.mark.parametrize("packed", ["folder", "zip"])
def test_darwin_core_archive_ingests_every_photo_with_date_place_and_taxonomy(runner, project, tmp_path,
                                                                               observations, packed):
    archive = _dwca(tmp_path / "dwca", observations)
    images = observations["images"]
    second = observations["obs"][1]  # it lists two photos, one is there: a reject line, the other ingested
    (images / f"{second['inat_id']}.jpg").rename(images / f"{second['inat_id']}_1.jpg")
    with (archive / "multimedia.txt").open("a") as f:
        f.write(f"{second['inat_id']}\tStillImage\timage/jpeg\thttps://x/2.jpg\tCC0\tuser1\n")
    if packed == "zip":
        with zipfile.ZipFile(tmp_path / "dwca.zip", "w") as z:
            for f in archive.iterdir():
                z.write(f, f.name)
        shutil.rmtree(archive)
        archive = tmp_path / "dwca.zip"
    result = _cli(runner, project, "ingest", archive, "--format", "dwca", "--images", images, "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    missing, no_photo = observations["missing"]["inat_id"], observations["no_photo"]["inat_id"]
    rejects = dict(store.warehouse(project).query("SELECT path, reason FROM rejects WHERE run_id = ?",
                                                  [out["run_id"]]).values.tolist())
    expected = {
        f"{archive}:{missing}": f"observation {missing}: photo missing (no file {missing}.* or {missing}_<k>.* "
                                f"in {images}; the source lists 1)",
        f"{archive}:{no_photo}": f"observation {no_photo}: no photo (the source lists none, and no file "
                                 f"{no_photo}.* or {no_photo}_<k>.* in {images})",
        f"{archive}:{second['inat_id']}": f"observation {second['inat_id']}: 1 of 2 photos missing in {images}; "
                                          "the other 1 ingested",
    }
    assert rejects == expected
    assert (out["added"], out["rejected"], out["noticed"]) == (13, 3, 0)

    ds = store.dataset(project, create=False)
    _check_observation_samples(ds, observations, timed=False)
    two = ds.match({"observation_id": observations["obs"][0]["inat_id"]}).sort_by("filepath")
    ident = observations["obs"][0]["inat_id"]
    assert two.values("media_identifier") == [f"https://static.inaturalist.org/photos/{ident}/{k}.jpg"
                                              for k in (1, 2)]  # each photo its own Multimedia row
    s = ds.match({"observation_id": second["inat_id"]}).first()
    assert (s.observer, s.identified_by, s.basis_of_record, s.occurrence_id, s.vernacular_name, s.taxon_rank) == (
        "user1", "ident1", "HumanObservation", f"inat:{second['inat_id']}", second["common_name"], "species")
    assert (s.media_license, s.media_creator) == ("CC-BY-NC", "user1")
    assert _taxa(project) == _expected_taxa()
    assert project_status(project)["ranks"] == {"kingdom": 1, "family": 2, "genus": 3, "species": 3}
    assert ingest(project, archive, fmt="dwca", images=images).added == 0


def test_darwin_core_archive_errors_name_the_problem(project, tmp_path, observations):
    bad = tmp_path / "bad.zip"
    bad.write_text("not a zip")
    with pytest.raises(IngestError, match=r"bad.zip: cannot read the Darwin Core Archive \(InvalidArchive: "):
        ingest(project, bad, fmt="dwca", images=observations["images"])
    archive = _dwca(tmp_path / "dwca", observations)
    meta = archive / "meta.xml"
    meta.write_text(meta.read_text().replace("dwc/terms/Occurrence", "dwc/terms/Taxon"))
    with pytest.raises(IngestError, match=r"the archive's core is http://rs.tdwg.org/dwc/terms/Taxon; "
                                          r"--format dwca reads an occurrence core"):
        ingest(project, archive, fmt="dwca")
    runs = store.warehouse(project).query("SELECT status FROM runs")
    assert runs["status"].tolist() == ["failed", "failed"]


# ---- the pure parts ------------------------------------------------------------------------
def test_observation_fields_dates_and_places():
    from fieldguide.platform.sources.observations import observed, parse_date

    assert observed("7", date="2017-03-02 19:23:00 -0800", date_column="time_observed_at", latitude=" 36.9",
                    longitude="-122.1", observer=" ann ") == {
        "observed_at": dt.datetime(2017, 3, 3, 3, 23), "location": (-122.1, 36.9), "observer": "ann"}
    assert observed("7", date="", date_column="eventDate", latitude="36.9", longitude="", observer="") == {}
    assert parse_date("2017-03-02/2017-03-05") == dt.datetime(2017, 3, 2)  # a Darwin Core range: its start
    with pytest.raises(ValueError, match=r"^observation 7: bad date '2021-02-30' in 'observed_on'$"):
        observed("7", date="2021-02-30", date_column="observed_on", latitude="", longitude="", observer="")
    with pytest.raises(ValueError, match=r"^observation 7: bad latitude/longitude '95', '20'$"):
        observed("7", date="", date_column="observed_on", latitude="95", longitude="20", observer="")


def test_rank_order_merges_lineages_coarse_to_fine():
    from fieldguide.platform.sources.taxonomy import rank_order

    assert rank_order([("family", "genus"), ("kingdom", "family"), ("genus", "species")]) == [
        "kingdom", "family", "genus", "species"]
    assert rank_order([("kingdom", "genus"), ("family", "genus"), ("section", "species")]) == [
        "kingdom", "family", "genus", "section", "species"]
    assert rank_order([("kingdom", "order", "family", "genus"), ("kingdom", "species"), ("kingdom", "phylum")]) == [
        "kingdom", "phylum", "order", "family", "genus", "species"]

