"""Every DICOM matching kind, at every level of both models, on SQLite and PostgreSQL.

One small dataset is loaded per test; each test walks a table of cases so the
PostgreSQL database is created a handful of times, not once per case.
"""

from __future__ import annotations

import pytest

from node.index import (
    IndexQuery,
    InvalidQuery,
    Level,
    Model,
    QueryRejected,
    SqlIndex,
)

from .conftest import record

S1, S2, S3, S4 = "1.2.10.1", "1.2.10.2", "1.2.10.3", "1.2.10.4"
SE1, SE2, SE3, SE4, SE5 = "1.2.20.1", "1.2.20.2", "1.2.20.3", "1.2.20.4", "1.2.20.5"
HOSTILE_ID = "PID' OR 1=1 --"


def _load(index: SqlIndex) -> None:
    p1 = {
        "patient_id": "PID1",
        "PatientName": "Doe^John",
        "PatientBirthDate": "19700101",
        "PatientSex": "M",
    }
    s1 = {
        "study": S1,
        "StudyDate": "20240105",
        "StudyTime": "101500",
        "AccessionNumber": "ACC1",
        "StudyDescription": "CT CHEST",
        "ReferringPhysicianName": "Smith^Ann",
        "StudyID": "1",
    }
    s2 = {
        "study": S2,
        "StudyDate": "20240220",
        "StudyTime": "230000.5",
        "AccessionNumber": "ACC_2",
        "StudyDescription": "100% brain",
        "ReferringPhysicianName": "jones^bob",
    }
    recs = [
        record(
            f"1.2.30.{n}",
            **p1,
            **s1,
            series=SE1,
            Modality="CT",
            SeriesNumber="1",
            SeriesDescription="AXIAL",
            BodyPartExamined="CHEST",
            InstanceNumber=str(n),
            Rows=512,
            Columns=512,
            ContentDate=f"2024010{n}",
            ContentTime="101500",
        )
        for n in (1, 2, 3)
    ]
    recs.append(record("1.2.30.4", **p1, **s1, series=SE2, Modality="MR", SeriesNumber="2"))
    recs += [
        record(f"1.2.30.{n}", **p1, **s2, series=SE3, Modality="MR", SeriesNumber="1")
        for n in (5, 6)
    ]
    recs.append(
        record(
            "1.2.30.7",
            patient_id="PID2",
            PatientName="DOE^JANE",
            PatientBirthDate="19851231",
            PatientSex="F",
            study=S3,
            StudyDate="20231231",
            StudyTime="0815",
            AccessionNumber="ACC%3",
            StudyDescription="Brain_MR",
            series=SE4,
            Modality="CT",
            SeriesDescription="scout",
        )
    )
    recs.append(
        record(
            "1.2.30.8",
            patient_id=HOSTILE_ID,
            collection="c2",
            PatientName="O'Brien^Pat",
            study=S4,
            StudyDate="20240105",
            AccessionNumber="X!Y",
            StudyDescription="a*b",
            series=SE5,
            Modality="US",
        )
    )
    index.add_instances(recs)


def _keys(index: SqlIndex, query: IndexQuery, key: str) -> set[object]:
    return {answer[key] for answer in index.find(query)}


def _check(index: SqlIndex, level: Level, model: Model, cases: list[tuple]) -> None:
    key = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID"}
    unique = key.get(level.value, "SOPInstanceUID")
    failures = []
    for filters, expected, *rest in cases:
        collections = rest[0] if rest else None
        query = IndexQuery(level=level, model=model, filters=filters, collections=collections)
        got = _keys(index, query, unique)
        if got != set(expected):
            failures.append(f"{filters} {collections}: expected {sorted(expected)}, got {got}")
    assert not failures, "\n".join(failures)


def test_study_level_matching(index: SqlIndex) -> None:
    _load(index)
    everything = [S1, S2, S3, S4]
    _check(
        index,
        Level.STUDY,
        Model.STUDY_ROOT,
        [
            ({}, everything),
            ({"PatientID": ""}, everything),  # universal
            ({"PatientName": "*"}, everything),
            ({"PatientID": "PID1"}, [S1, S2]),
            ({"PatientID": "pid1"}, []),  # LO is case-sensitive
            ({"PatientName": "doe*"}, [S1, S2, S3]),  # PN is not
            ({"PatientName": "DOE^JOHN"}, [S1, S2]),
            ({"PatientName": "doe^john^^"}, [S1, S2]),  # empty trailing components
            ({"PatientName": "d?e^j*"}, [S1, S2, S3]),
            ({"PatientName": "DOE"}, []),  # single value is not a prefix
            ({"PatientName": "O'BRIEN*"}, [S4]),
            ({"StudyDate": "20240105"}, [S1, S4]),
            ({"StudyDate": "20240101-20240131"}, [S1, S4]),
            ({"StudyDate": "20240201-"}, [S2]),
            ({"StudyDate": "-20231231"}, [S3]),
            ({"StudyDate": "20240105\\20231231"}, [S1, S3, S4]),
            ({"StudyTime": "10-11"}, [S1]),
            ({"StudyTime": "2300-"}, [S2]),
            ({"StudyTime": "0815"}, [S3]),
            ({"StudyTime": "-0900"}, [S3]),
            ({"AccessionNumber": "ACC_2"}, [S2]),
            ({"AccessionNumber": "ACC%3"}, [S3]),
            ({"AccessionNumber": "ACC*"}, [S1, S2, S3]),
            ({"AccessionNumber": "ACC?2"}, [S2]),
            ({"AccessionNumber": "ACC_*"}, [S2]),  # literal _
            ({"AccessionNumber": "ACC%*"}, [S3]),  # literal %
            ({"AccessionNumber": "X!Y"}, [S4]),  # the escape character itself
            ({"AccessionNumber": "X!*"}, [S4]),
            ({"StudyDescription": "*brain*"}, [S2]),  # case-sensitive wildcard
            ({"StudyDescription": "100%*"}, [S2]),
            ({"StudyDescription": "Brain_*"}, [S3]),
            ({"StudyDescription": "Brain?MR"}, [S3]),
            ({"StudyID": "1"}, [S1]),
            ({"StudyInstanceUID": S1}, [S1]),
            ({"StudyInstanceUID": f"{S1}\\{S3}"}, [S1, S3]),
            ({"StudyInstanceUID": "1.2.999"}, []),
            ({"ModalitiesInStudy": "MR"}, [S1, S2]),
            ({"ModalitiesInStudy": "CT\\US"}, [S1, S3, S4]),
            ({"ModalitiesInStudy": "C?"}, [S1, S3]),
            ({"ReferringPhysicianName": "SMITH*"}, [S1]),
            ({"ReferringPhysicianName": "Jones^Bob"}, [S2]),
            ({"PatientID": HOSTILE_ID}, [S4]),
            ({"PatientName": "' OR 1=1 --"}, []),
            ({"StudyDescription": "*' OR '1'='1*"}, []),
            ({"PatientName": "doe*", "StudyDate": "20240101-"}, [S1, S2]),
            ({"PatientSex": "F"}, [S3]),
            ({"PatientBirthDate": "19800101-"}, [S3]),
            ({"Modality": "XX", "SOPInstanceUID": "9.9"}, everything),  # below level
            ({"NoSuchKeyword": "x"}, everything),  # unknown: ignored
            ({"NumberOfStudyRelatedInstances": "99"}, everything),  # return key only
            ({}, [S1, S2, S3], ("c1",)),
            ({}, [S4], ("c2",)),
            ({}, [], ()),
            ({"PatientName": "doe*"}, [], ("c2",)),
        ],
    )


def test_series_level_matching(index: SqlIndex) -> None:
    _load(index)
    _check(
        index,
        Level.SERIES,
        Model.STUDY_ROOT,
        [
            ({}, [SE1, SE2, SE3, SE4, SE5]),
            ({"StudyInstanceUID": S1}, [SE1, SE2]),
            ({"Modality": "MR"}, [SE2, SE3]),
            ({"Modality": "CT\\MR"}, [SE1, SE2, SE3, SE4]),
            ({"Modality": "ct"}, []),
            ({"SeriesNumber": "2"}, [SE2]),
            ({"SeriesNumber": "1\\2", "StudyInstanceUID": S1}, [SE1, SE2]),
            ({"SeriesDescription": "AX*"}, [SE1]),
            ({"SeriesDescription": "SCOUT"}, []),
            ({"BodyPartExamined": "CHEST"}, [SE1]),
            ({"PatientName": "DOE^JANE"}, [SE4]),
            ({"ModalitiesInStudy": "MR", "Modality": "CT"}, [SE1]),
            ({"SeriesInstanceUID": f"{SE3}\\{SE5}"}, [SE3, SE5]),
            ({"StudyDate": "20240105"}, [SE1, SE2, SE5]),
            ({"InstanceNumber": "77"}, [SE1, SE2, SE3, SE4, SE5]),  # below level
            ({}, [SE5], ("c2",)),
        ],
    )


def test_image_level_matching(index: SqlIndex) -> None:
    _load(index)
    _check(
        index,
        Level.IMAGE,
        Model.STUDY_ROOT,
        [
            ({"SeriesInstanceUID": SE1}, ["1.2.30.1", "1.2.30.2", "1.2.30.3"]),
            ({"InstanceNumber": "2"}, ["1.2.30.2"]),
            ({"InstanceNumber": "+2"}, ["1.2.30.2"]),
            ({"SOPInstanceUID": "1.2.30.4\\1.2.30.8"}, ["1.2.30.4", "1.2.30.8"]),
            (
                {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.2", "StudyInstanceUID": S2},
                ["1.2.30.5", "1.2.30.6"],
            ),
            ({"Rows": "512", "InstanceNumber": "3"}, ["1.2.30.3"]),
            ({"ContentDate": "20240102-20240103"}, ["1.2.30.2", "1.2.30.3"]),
            ({"ContentTime": "101500", "ContentDate": "20240101"}, ["1.2.30.1"]),
            ({"ContentTime": "1016-"}, []),
            ({"PatientID": "PID2", "Modality": "CT"}, ["1.2.30.7"]),
            ({"ModalitiesInStudy": "US"}, ["1.2.30.8"]),
        ],
    )


def test_patient_root_levels(index: SqlIndex) -> None:
    _load(index)
    _check(
        index,
        Level.PATIENT,
        Model.PATIENT_ROOT,
        [
            ({}, ["PID1", "PID2", HOSTILE_ID]),
            ({"PatientName": "DOE*"}, ["PID1", "PID2"]),
            ({"PatientName": "doe^jane"}, ["PID2"]),
            ({"PatientID": "PID?"}, ["PID1", "PID2"]),
            ({"PatientBirthDate": "-19791231"}, ["PID1"]),
            ({"PatientSex": "M\\F"}, ["PID1", "PID2"]),
            ({"StudyDate": "20231231"}, ["PID1", "PID2", HOSTILE_ID]),  # below level
            ({}, [HOSTILE_ID], ("c2",)),
        ],
    )
    _check(
        index,
        Level.STUDY,
        Model.PATIENT_ROOT,
        [
            ({"PatientID": "PID1"}, [S1, S2]),
            ({"PatientID": "PID1", "StudyDate": "20240201-"}, [S2]),
            ({"PatientName": "*JANE"}, [S3]),
        ],
    )
    _check(index, Level.SERIES, Model.PATIENT_ROOT, [({"PatientID": "PID2"}, [SE4])])
    _check(index, Level.IMAGE, Model.PATIENT_ROOT, [({"PatientID": "PID2"}, ["1.2.30.7"])])


def test_answers_hold_requested_and_unique_keys_as_dicom_values(index: SqlIndex) -> None:
    _load(index)
    requested = (
        "PatientName",
        "StudyDate",
        "StudyTime",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
        "NumberOfPatientRelatedStudies",
        "Modality",  # below STUDY: left out
        "OtherPatientIDs",  # unknown: present, empty
    )
    query = IndexQuery(level=Level.STUDY, filters={"StudyInstanceUID": S1}, requested=requested)
    [answer] = list(index.find(query))
    assert answer == {
        "StudyInstanceUID": S1,
        "PatientName": "Doe^John",
        "StudyDate": "20240105",
        "StudyTime": "101500",
        "ModalitiesInStudy": ["CT", "MR"],
        "NumberOfStudyRelatedSeries": 2,
        "NumberOfStudyRelatedInstances": 4,
        "NumberOfPatientRelatedStudies": 2,
        "OtherPatientIDs": None,
    }
    query = IndexQuery(
        level=Level.IMAGE,
        model=Model.PATIENT_ROOT,
        filters={"SOPInstanceUID": "1.2.30.2"},
        requested=("InstanceNumber", "Rows", "ContentDate", "NumberOfSeriesRelatedInstances"),
    )
    [answer] = list(index.find(query))
    assert answer == {
        "PatientID": "PID1",
        "StudyInstanceUID": S1,
        "SeriesInstanceUID": SE1,
        "SOPInstanceUID": "1.2.30.2",
        "InstanceNumber": 2,
        "Rows": 512,
        "ContentDate": "20240102",
        "NumberOfSeriesRelatedInstances": 3,
    }
    limited = IndexQuery(level=Level.IMAGE, limit=2)
    assert len(list(index.find(limited))) == 2


@pytest.mark.parametrize(
    ("level", "model", "filters"),
    [
        (Level.PATIENT, Model.STUDY_ROOT, {}),
        (Level.STUDY, Model.STUDY_ROOT, {"StudyDate": "2024-01-01"}),
        (Level.STUDY, Model.STUDY_ROOT, {"StudyDate": "20240131-20240101"}),
        (Level.STUDY, Model.STUDY_ROOT, {"StudyDate": "2024*"}),
        (Level.STUDY, Model.STUDY_ROOT, {"StudyDate": "yesterday"}),
        (Level.STUDY, Model.STUDY_ROOT, {"StudyTime": "25:00-xx"}),
        (Level.STUDY, Model.STUDY_ROOT, {"StudyInstanceUID": "1.2.*"}),
        (Level.IMAGE, Model.STUDY_ROOT, {"InstanceNumber": "two"}),
        (Level.IMAGE, Model.STUDY_ROOT, {"InstanceNumber": "1*"}),
        (Level.STUDY, Model.STUDY_ROOT, {"PatientID": "A\x00B"}),
    ],
)
def test_invalid_queries_are_refused_before_any_sql(
    sqlite_url: str, level: Level, model: Model, filters: dict[str, str]
) -> None:
    index = SqlIndex.open(sqlite_url)
    try:
        with pytest.raises(InvalidQuery):
            index.find(IndexQuery(level=level, model=model, filters=filters))
        with pytest.raises(InvalidQuery):
            index.count_instances(IndexQuery(level=level, model=model, filters=filters))
    finally:
        index.close()


def test_absurd_and_hostile_inputs(index: SqlIndex) -> None:
    _load(index)
    huge = "A" * 65536
    for filters in (
        {"PatientName": huge},
        {"StudyDescription": "*" + "?" * 2000},
        {"StudyInstanceUID": huge},
        {"StudyInstanceUID": "\\".join(f"1.2.{n}" for n in range(1001))},
    ):
        with pytest.raises(QueryRejected):
            index.find(IndexQuery(level=Level.STUDY, filters=filters))
    uids = "\\".join([S2, *(f"1.2.{n}" for n in range(999))])
    assert _keys(
        index, IndexQuery(level=Level.STUDY, filters={"StudyInstanceUID": uids}), "StudyInstanceUID"
    ) == {S2}
    # SQL and LIKE metacharacters are data; trailing NUL/space padding is ignored.
    for value in ("' OR 1=1 --", "'; DROP TABLE studies; --", "%", "_", '"', "*%*"):
        answers = list(index.find(IndexQuery(level=Level.STUDY, filters={"PatientID": value})))
        assert answers == [], value
    padded = IndexQuery(level=Level.STUDY, filters={"PatientID": "PID2\x00", "StudyID": " "})
    assert _keys(index, padded, "StudyInstanceUID") == {S3}
    assert index.stats()["studies"] == 4  # nothing was dropped
