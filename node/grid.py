"""Grid-wide C-FIND: the node's grid AE title answers from the catalog (Conquest's
"virtual server"), so a workstation finds a study on any node through its own node.

Each match carries RetrieveAETitle = the AE titles of the nodes that hold it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from catalog import InstanceMatch as CatalogInstanceMatch
from catalog import QueryFilter, SeriesMatch, StudyMatch
from node.errors import InvalidIdentifier
from node.index.records import IndexQuery, Level

_SCALAR = {
    "PatientID": "patient_id",
    "PatientName": "patient_name",
    "StudyDate": "study_date",
    "AccessionNumber": "accession_number",
    "StudyDescription": "study_description",
}
_LISTS = {
    "StudyInstanceUID": "study_instance_uids",
    "SeriesInstanceUID": "series_instance_uids",
    "SOPInstanceUID": "sop_instance_uids",
    "ModalitiesInStudy": "modalities",
    "Modality": "modalities",
}


class CatalogQueries(Protocol):
    def query_studies(self, query: QueryFilter) -> Iterator[StudyMatch]: ...

    def query_series(self, query: QueryFilter) -> Iterator[SeriesMatch]: ...

    def query_instances(self, query: QueryFilter) -> Iterator[CatalogInstanceMatch]: ...


def to_filter(query: IndexQuery) -> QueryFilter:
    """The catalog filter for a C-FIND identifier; unsupported matching keys are refused."""
    values: dict[str, object] = {}
    for keyword, raw in query.filters.items():
        if keyword in _SCALAR:
            values[_SCALAR[keyword]] = raw
        elif keyword in _LISTS:
            values[_LISTS[keyword]] = tuple(v for v in raw.split("\\") if v)
        else:
            raise InvalidIdentifier(f"grid queries cannot match on {keyword}")
    return QueryFilter(**values)  # type: ignore[arg-type]


def _holders(match: StudyMatch | SeriesMatch | CatalogInstanceMatch) -> list[str]:
    return sorted({h.ae_title for h in match.holders})


class GridQueryService:
    """Streams catalog matches as index-shaped dicts for the gateway's C-FIND handler."""

    def __init__(self, catalog: CatalogQueries) -> None:
        self._catalog = catalog

    def find(self, query: IndexQuery) -> Iterator[dict[str, object]]:
        flt = to_filter(query)
        if query.level is Level.PATIENT:
            raise InvalidIdentifier("the grid answers STUDY, SERIES and IMAGE level queries")
        if query.level is Level.STUDY:
            for study in self._catalog.query_studies(flt):
                yield {
                    **study.attributes,
                    "StudyInstanceUID": study.study_instance_uid,
                    "ModalitiesInStudy": list(study.modalities_in_study),
                    "NumberOfStudyRelatedSeries": study.number_of_series,
                    "NumberOfStudyRelatedInstances": study.number_of_instances,
                    "RetrieveAETitle": _holders(study),
                }
        elif query.level is Level.SERIES:
            for series in self._catalog.query_series(flt):
                yield {
                    **series.attributes,
                    "StudyInstanceUID": series.study_instance_uid,
                    "SeriesInstanceUID": series.series_instance_uid,
                    "NumberOfSeriesRelatedInstances": series.number_of_instances,
                    "RetrieveAETitle": _holders(series),
                }
        else:
            for inst in self._catalog.query_instances(flt):
                yield {
                    **inst.attributes,
                    "StudyInstanceUID": inst.study_instance_uid,
                    "SeriesInstanceUID": inst.series_instance_uid,
                    "SOPInstanceUID": inst.sop_instance_uid,
                    "SOPClassUID": inst.sop_class_uid,
                    "RetrieveAETitle": _holders(inst),
                }
