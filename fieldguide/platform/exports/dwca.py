"""``dwca``: a Darwin Core Archive (text, uncompressed) of identifications.

One ``Identification`` record per label change in ``label_history`` (old != new, a label set,
not removed): ``identifiedBy`` the actor, ``dateIdentified`` the time (ISO 8601, UTC),
``identificationRemarks`` the source (curator, labelstudio, pseudo, ...), ``scientificName`` the
new label, ``previousIdentifications`` the old one, ``occurrenceID`` the sample's
``observation_id`` (else its id). ``identificationID`` is ``<sample id>-<history index>``, the
``event_id`` of the warehouse's ``label_events``. Changes that accepted pseudo-labels are
records only with ``--include-pseudo``. ``meta.xml`` describes ``identification.txt`` (tab
separated, UTF-8, one header line) for any DwC-A reader (python-dwca-reader, GBIF's tools);
zip the folder's files for a publisher that wants one file.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from fieldguide.platform.exports.labels_csv import iso_utc
from fieldguide.platform.exports.registry import ExportJob, register_format

DWC = "http://rs.tdwg.org/dwc/terms/"
TEXT_NS = "http://rs.tdwg.org/dwc/text/"
ROW_TYPE = DWC + "Identification"
DATA_FILE = "identification.txt"
TERMS = ["identificationID", "occurrenceID", "scientificName", "identifiedBy", "dateIdentified",
         "identificationRemarks", "previousIdentifications"]


@register_format("dwca", media=False, labeled_only=False,
                 summary="Darwin Core Archive: one Identification record per label change (meta.xml + identification.txt)")
def write_dwca(job: ExportJob) -> int:
    records = identification_records(job)
    lines = [TERMS] + [[_cell(r[term]) for term in TERMS] for r in records]
    (job.out / DATA_FILE).write_text("".join("\t".join(line) + "\n" for line in lines), encoding="utf-8")
    write_meta(job.out / "meta.xml")
    return len(records)


def identification_records(job: ExportJob) -> list[dict]:
    """One dict per label change (keys: :data:`TERMS`), in sample then history order."""
    records = []
    for row in job.table.itertuples():
        for index, entry in enumerate(row.history):
            if entry.get("old") == entry.get("new") or entry.get("new") is None:
                continue  # a confirmation or a removed label: no new identification
            if entry.get("source") == "pseudo" and not job.include_pseudo:
                continue
            records.append({
                "identificationID": f"{row.id}-{index}",
                "occurrenceID": row.observation_id or row.id,
                "scientificName": entry["new"],
                "identifiedBy": entry.get("actor"),
                "dateIdentified": iso_utc(entry.get("time")),
                "identificationRemarks": entry.get("source"),
                "previousIdentifications": entry.get("old"),
            })
    return records


def write_meta(path) -> None:
    """meta.xml: the core file, its delimiters and one field per term (column index = position)."""
    ET.register_namespace("", TEXT_NS)
    archive = ET.Element(f"{{{TEXT_NS}}}archive")
    core = ET.SubElement(archive, f"{{{TEXT_NS}}}core", {
        "encoding": "UTF-8", "fieldsTerminatedBy": "\\t", "linesTerminatedBy": "\\n",
        "fieldsEnclosedBy": "", "ignoreHeaderLines": "1", "rowType": ROW_TYPE,
    })
    files = ET.SubElement(core, f"{{{TEXT_NS}}}files")
    ET.SubElement(files, f"{{{TEXT_NS}}}location").text = DATA_FILE
    ET.SubElement(core, f"{{{TEXT_NS}}}id", {"index": "0"})
    for index, term in enumerate(TERMS):
        ET.SubElement(core, f"{{{TEXT_NS}}}field", {"index": str(index), "term": DWC + term})
    tree = ET.ElementTree(archive)
    ET.indent(tree)
    tree.write(path, encoding="UTF-8", xml_declaration=True)


def _cell(value) -> str:
    """Unquoted text: tabs and line breaks (which would split the record) become spaces."""
    if value is None:
        return ""
    return " ".join(str(value).replace("\t", " ").splitlines())
