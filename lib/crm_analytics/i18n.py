"""Report language: translate headings, captions, plot labels and generated sentences.

English is written in the notebooks and the package; other languages come from a
catalogue (``resources/<language>.yaml``) that maps English text to its
translation. A key may hold ``{name}`` placeholders, so that generated text such
as ``"Sources per {table}"`` matches whatever was filled in; the translation
repeats the placeholders where its grammar puts them. A filled-in value that is
itself a catalogue key (``"better"``) is translated too.

Text is matched whole first, then paragraph by paragraph and sentence by
sentence, so a long generated paragraph needs one entry per sentence. Text with
no entry stays in English: a report is never blank because a sentence is new.
"""

from __future__ import annotations

import functools
import re
from importlib import resources
from typing import Any

import yaml

LANGUAGES: tuple[str, ...] = ("en", "zh")
"""Report languages; English is the source language."""

_current = "en"

_PLACEHOLDER = re.compile(r"\\\{([A-Za-z_][A-Za-z0-9_]*)\\\}")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9*(`])|(?<=[.!?]\*\*)\s+(?=[A-Z0-9*(`])")
_CJK = re.compile(r"[\u3000-\u30ff\u3400-\u9fff\uff00-\uffef]")


def check_language(language: str) -> str:
    """Return ``language`` if it is a report language.

    Parameters
    ----------
    language : str
        Language code.

    Returns
    -------
    str
        The same code.

    Raises
    ------
    ValueError
        If the language is not one of :data:`LANGUAGES`.
    """
    if language not in LANGUAGES:
        raise ValueError(f"report_language must be one of {', '.join(LANGUAGES)}, got {language!r}")
    return language


def set_language(language: str) -> str:
    """Set the language that :func:`translate` uses when none is given.

    Parameters
    ----------
    language : str
        One of :data:`LANGUAGES`.

    Returns
    -------
    str
        The language now in effect.
    """
    global _current
    _current = check_language(language)
    return _current


def current_language() -> str:
    """Return the language set by :func:`set_language` (``"en"`` by default)."""
    return _current


def _normalise(text: str) -> str:
    """Collapse runs of white space (hard-wrapped markdown) into single spaces."""
    return " ".join(text.split())


Catalogue = tuple[dict[str, str], tuple[tuple[re.Pattern[str], str], ...]]
"""Exact entries (English -> translation) and placeholder patterns with their templates."""


def compile_catalogue(entries: dict[str, str], source: str = "catalogue") -> Catalogue:
    """Compile English -> translation entries into exact entries and placeholder patterns.

    Parameters
    ----------
    entries : dict
        English text (``{name}`` placeholders allowed) -> translation.
    source : str, default "catalogue"
        Where the entries come from, for error messages.

    Returns
    -------
    exact : dict
        Entries without placeholders, keys with white space collapsed.
    patterns : tuple of (re.Pattern, str)
        Keys with placeholders as anchored patterns, most specific (longest) first.

    Raises
    ------
    ValueError
        If a translation names a placeholder its key does not have.
    """
    exact: dict[str, str] = {}
    patterns: list[tuple[re.Pattern[str], str]] = []
    for key, value in entries.items():
        key, value = _normalise(str(key)), str(value).strip()
        names = re.findall(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", key)
        if not names:
            exact[key] = value
            continue
        unknown = set(re.findall(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", value)) - set(names)
        if unknown:
            raise ValueError(
                f"{source}: translation of {key!r} uses unknown placeholders {sorted(unknown)}"
            )
        regex = _PLACEHOLDER.sub(lambda m: f"(?P<{m.group(1)}>.+?)", re.escape(key))
        patterns.append((re.compile(regex, re.DOTALL), value))
    patterns.sort(key=lambda p: -len(p[0].pattern))
    return exact, tuple(patterns)


@functools.cache
def catalogue(language: str) -> Catalogue:
    """Return the compiled translations of a language (``resources/<language>.yaml``).

    Parameters
    ----------
    language : str
        One of :data:`LANGUAGES`; English has an empty catalogue.

    Returns
    -------
    Catalogue
        See :func:`compile_catalogue`.
    """
    check_language(language)
    if language == "en":
        return {}, ()
    name = f"resources/{language}.yaml"
    text = resources.files("crm_analytics").joinpath(name).read_text("utf-8")
    return compile_catalogue(yaml.safe_load(text) or {}, name)


def _lookup(text: str, language: str, table: Catalogue | None = None) -> str | None:
    """Translate one piece of text as a whole, or return None."""
    exact, patterns = table if table is not None else catalogue(language)
    key = _normalise(text)
    if key in exact:
        return exact[key]
    for regex, template in patterns:
        found = regex.fullmatch(key)
        # a placeholder never spans sentences: a short key must not swallow the sentences after it
        if found and not any(_SENTENCE_END.search(v) for v in found.groupdict().values()):
            values = {k: exact.get(v, v) for k, v in found.groupdict().items()}
            return re.sub(
                r"\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m, v=values: v[m.group(1)], template
            )
    return None


def _join(parts: list[str]) -> str:
    """Join translated sentences: no space after a CJK full stop, one otherwise."""
    out = ""
    for part in parts:
        if out and not _CJK.search(out.rstrip("*`")[-1:]):
            out += " "
        out += part
    return out


def translate(text: str, language: str | None = None, table: Catalogue | None = None) -> str:
    """Return ``text`` in the report language.

    Parameters
    ----------
    text : str
        English text: a heading, caption, plot label or generated paragraph.
    language : str, optional
        Target language; the one set by :func:`set_language` when omitted.
    table : Catalogue, optional
        Translations to use instead of the language's catalogue file.

    Returns
    -------
    str
        The translation; parts without a catalogue entry stay in English.
    """
    language = check_language(language or _current)
    if language == "en" or not text.strip():
        return text
    whole = _lookup(text, language, table)
    if whole is not None:
        return whole
    paragraphs = re.split(r"\n\s*\n", text.strip())
    out = []
    for para in paragraphs:
        found = _lookup(para, language, table)
        if found is None:
            sentences = _SENTENCE_END.split(_normalise(para))
            found = _join([_lookup(s, language, table) or s for s in sentences])
        out.append(found)
    return "\n\n".join(out)


def translate_markdown(source: str, language: str | None = None) -> str:
    """Translate a markdown cell: headings line by line, other text by paragraph.

    Parameters
    ----------
    source : str
        Markdown source.
    language : str, optional
        Target language; the current one when omitted.

    Returns
    -------
    str
        The translated markdown (heading markers kept).
    """
    blocks = re.split(r"\n\s*\n", source.strip())
    out = []
    for block in blocks:
        lines = block.splitlines()
        if lines and lines[0].startswith("#"):
            marks, _, title = lines[0].partition(" ")
            head = f"{marks} {translate(title, language)}"
            rest = "\n".join(lines[1:])
            out.append(head + ("\n\n" + translate(rest, language) if rest.strip() else ""))
        else:
            out.append(translate(block, language))
    return "\n\n".join(out)


def translate_notebook(nb: Any, language: str) -> int:
    """Translate every markdown cell of a notebook in place (HTML cells are left alone).

    Parameters
    ----------
    nb : nbformat.NotebookNode
        The notebook.
    language : str
        Target language.

    Returns
    -------
    int
        Number of markdown cells changed.
    """
    check_language(language)
    changed = 0
    for cell in nb.cells:
        if cell.cell_type == "markdown" and not cell.source.lstrip().startswith("<"):
            new = translate_markdown(cell.source, language)
            if new != cell.source.strip():
                cell.source = new
                changed += 1
    return changed


def untranslated(text: str) -> bool:
    """Return True when a piece of report text has letters but no CJK character.

    Used by tests to find English left in a Chinese report.

    Parameters
    ----------
    text : str
        Visible text.

    Returns
    -------
    bool
        Whether the text looks untranslated.
    """
    return bool(re.search(r"[A-Za-z]{3,}", text)) and not _CJK.search(text)
