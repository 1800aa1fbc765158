"""Reading and checking the optional clinical and adverse-event tables of a study.

``clinical.csv``: one row per patient, visit and score — columns ``patient_id``, ``visit``,
``score``, ``value`` (a number). ``adverse_events.csv``: CDISC SDTM AE domain columns,
``USUBJID`` (= ``patient_id``), ``AETERM`` and/or ``AEDECOD``, ``AEBODSYS``, ``AESTDY``
(study day), ``AESEV`` (MILD/MODERATE/SEVERE) and/or ``AETOXGR`` (1-5), ``AESER`` (Y/N),
``AEREL``; other columns are kept.

Each reader returns the table and a list of problems, one line each naming the file, the line
(the header is line 1) and the column.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

AE_SEVERITIES = ("MILD", "MODERATE", "SEVERE")


def read_csv_text(path: Path) -> tuple[pd.DataFrame | None, list[str]]:
    """A CSV as strings (no NA conversion), or None and the problem."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except FileNotFoundError:
        return None, [f"{path}: file not found"]
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        return None, [f"{path}: not a readable CSV table ({str(err).strip()})"]
    df.columns = [str(c).strip() for c in df.columns]
    return df.apply(lambda col: col.str.strip()), []


def where(path: Path, row: int, column: str) -> str:
    """``"<path>, line <n>, column '<column>'"`` for data row ``row`` (0-based)."""
    return f"{path}, line {row + 2}, column '{column}'"


def missing_columns(df: pd.DataFrame, path: Path, required) -> list[str]:
    return [f"{path}, line 1: required column '{c}' is missing" for c in required
            if c not in df.columns]


def read_clinical(path: Path, patients: set[str], visits: set[str]
                  ) -> tuple[pd.DataFrame | None, list[str]]:
    """The clinical table (``value`` as float) and its problems."""
    df, problems = read_csv_text(path)
    if df is None:
        return None, problems
    problems = missing_columns(df, path, ("patient_id", "visit", "score", "value"))
    if problems:
        return None, problems
    values = pd.to_numeric(df["value"], errors="coerce")
    seen: dict[tuple, int] = {}
    for i, row in enumerate(df.itertuples(index=False)):
        if row.patient_id not in patients:
            problems.append(f"{where(path, i, 'patient_id')}: unknown patient "
                            f"'{row.patient_id}' (not in samples.csv)")
        if row.visit not in visits:
            problems.append(f"{where(path, i, 'visit')}: unknown visit '{row.visit}' "
                            f"(study.yaml declares {', '.join(sorted(visits))})")
        if not row.score:
            problems.append(f"{where(path, i, 'score')}: empty score name")
        if np.isnan(values.iloc[i]):
            problems.append(f"{where(path, i, 'value')}: '{row.value}' is not a number")
        key = (row.patient_id, row.visit, row.score)
        if key in seen:
            problems.append(f"{where(path, i, 'score')}: {row.score} of {row.patient_id} at "
                            f"{row.visit} already given on line {seen[key] + 2}")
        seen.setdefault(key, i)
    df["value"] = values
    return df, problems


def read_adverse_events(path: Path, patients: set[str]
                        ) -> tuple[pd.DataFrame | None, list[str]]:
    """The adverse-event table (``AESTDY`` and ``AETOXGR`` as numbers) and its problems."""
    df, problems = read_csv_text(path)
    if df is None:
        return None, problems
    problems = missing_columns(df, path, ("USUBJID", "AESTDY"))
    if "AETERM" not in df.columns and "AEDECOD" not in df.columns:
        problems.append(f"{path}, line 1: needs a column 'AEDECOD' or 'AETERM'")
    if "AESEV" not in df.columns and "AETOXGR" not in df.columns:
        problems.append(f"{path}, line 1: needs a column 'AESEV' or 'AETOXGR'")
    if problems:
        return None, problems
    day = pd.to_numeric(df["AESTDY"], errors="coerce")
    grade = (pd.to_numeric(df["AETOXGR"], errors="coerce") if "AETOXGR" in df.columns
             else None)
    for i, row in df.iterrows():
        if row["USUBJID"] not in patients:
            problems.append(f"{where(path, i, 'USUBJID')}: unknown subject '{row['USUBJID']}' "
                            f"(not a patient_id of samples.csv)")
        if np.isnan(day.iloc[i]) or day.iloc[i] != np.round(day.iloc[i]):
            problems.append(f"{where(path, i, 'AESTDY')}: '{row['AESTDY']}' is not a study day")
        if "AESEV" in df.columns and row["AESEV"] and row["AESEV"].upper() not in AE_SEVERITIES:
            problems.append(f"{where(path, i, 'AESEV')}: '{row['AESEV']}' is not one of "
                            f"{', '.join(AE_SEVERITIES)}")
        if grade is not None and row["AETOXGR"] and not (
                grade.iloc[i] in (1, 2, 3, 4, 5)):
            problems.append(f"{where(path, i, 'AETOXGR')}: '{row['AETOXGR']}' is not a grade "
                            f"1-5")
        if "AESER" in df.columns and row["AESER"] and row["AESER"].upper() not in ("Y", "N"):
            problems.append(f"{where(path, i, 'AESER')}: '{row['AESER']}' is not Y or N")
    df["AESTDY"] = day
    if grade is not None:
        df["AETOXGR"] = grade
    return df, problems
