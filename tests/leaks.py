"""Finding raw personal data in report text, in the forms a report could show it."""

from __future__ import annotations

import re

import pandas as pd


def _pattern(column: str, value: str) -> re.Pattern[str] | None:
    """Return how ``value`` of a personal column would look in a report, or None to skip it."""
    value = value.strip()
    if column == "phone":
        digits = re.sub(r"\D", "", value)[-11:]  # the national number, however it was written
        if len(digits) < 7:
            return None
        # as written or normalised (+86 13812345678, 138-1234-5678, 13812345678)
        return re.compile(r"[\s\-]?".join(digits) + r"(?!\d)")
    if column == "name":
        # Chinese names have two or three characters: a name standing alone in the text
        return re.compile(rf"(?<!\w){re.escape(value)}(?!\w)") if value else None
    if column == "email":
        return re.compile(re.escape(value), re.IGNORECASE) if "@" in value else None
    return re.compile(re.escape(value)) if len(value) >= 6 else None


def personal_values_in(text: str, people: pd.DataFrame) -> dict[str, list[str]]:
    """Return the personal values of ``people`` found in ``text``, per column.

    Parameters
    ----------
    text : str
        Report text (HTML, executed notebooks, JSON).
    people : pandas.DataFrame
        Source rows with columns among ``name``, ``email``, ``phone``, ``birth_date``.

    Returns
    -------
    dict
        Column -> values found (columns without any left out).
    """
    found: dict[str, list[str]] = {}
    for column in people.columns:
        for value in people[column].dropna().astype(str):
            pattern = _pattern(column, value)
            if pattern is not None and pattern.search(text):
                found.setdefault(column, []).append(value)
    return found
