"""Parameter sets: loading the YAML files in ``params/`` and resolving project paths.

A parameter file has global keys (``store``, ``cutoff_date``, ``seed`` ...), one
section per stage (``collect``, ``clean``, ``segment``, ``churn``, ``forecast``)
and an optional ``generate`` section describing the synthetic dataset. A stage
notebook receives the global keys plus its own section as papermill parameters.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

STAGES: tuple[str, ...] = ("collect", "clean", "segment", "churn", "forecast")
"""Pipeline stages, in run order."""

NOTEBOOKS: dict[str, str] = {
    "collect": "01_collect.ipynb",
    "clean": "02_clean.ipynb",
    "segment": "03_segment.ipynb",
    "churn": "04_churn.ipynb",
    "forecast": "05_forecast.ipynb",
}
"""Notebook file of each stage, inside ``notebooks/``."""

STAGE_NEEDS: dict[str, tuple[str, ...]] = {
    "segment": ("orders",),
    "forecast": ("orders",),
}
"""Clean tables (with at least one row) a stage needs; without them the runner skips it."""

NON_STAGE_SECTIONS: tuple[str, ...] = ("generate", "report")
"""Top-level sections that are not passed to notebooks."""


def project_root(start: Path | None = None) -> Path:
    """Return the project's root folder.

    The root is ``$CRM_ANALYTICS_ROOT`` when set, else the nearest folder at or
    above ``start`` (default: the working directory) that holds both
    ``pyproject.toml`` and ``params/``, else the working directory.

    Parameters
    ----------
    start : Path, optional
        Folder to search upwards from.

    Returns
    -------
    Path
        Absolute path of the project root.
    """
    env = os.environ.get("CRM_ANALYTICS_ROOT")
    if env:
        return Path(env).resolve()
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "params").is_dir():
            return folder
    return here


def resolve_path(path: str | os.PathLike[str], root: Path | None = None) -> Path:
    """Resolve a path given relative to the project root.

    Parameters
    ----------
    path : str or PathLike
        Absolute path, or path relative to the project root.
    root : Path, optional
        Project root; found with :func:`project_root` when omitted.

    Returns
    -------
    Path
        Absolute path.
    """
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    return (root or project_root()) / p


def load_params(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a parameter YAML file and check its shape.

    Parameters
    ----------
    path : str or PathLike
        The YAML file.

    Returns
    -------
    dict
        The parameters, with every stage section present (possibly empty).

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If the file is not a mapping, its ``store`` is not a DuckDB file, its
        ``engine`` is unknown (or ``postgres`` without ``engine_url``), or a stage
        section is not a mapping.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"parameter file not found: {file}")
    with file.open(encoding="utf-8") as fh:
        params = yaml.safe_load(fh) or {}
    if not isinstance(params, dict):
        raise ValueError(f"{file}: a parameter file must be a mapping, got {type(params).__name__}")
    if "store" not in params:
        raise ValueError(f"{file}: missing required key 'store' (the DuckDB file of the store)")
    store = str(params["store"])
    resolved = expand_env(store)
    if "://" in resolved or resolved in ("", ":memory:"):
        raise ValueError(
            f"{file}: 'store' must be a DuckDB file, not "
            f"{'a database URL' if '://' in resolved else repr(resolved)}: the stages read "
            "sources and clean them with DuckDB's own readers and functions. To run the "
            "feature aggregation on PostgreSQL, set 'engine: postgres' and "
            "'engine_url: postgresql://user@host:5432/db'"
        )
    engine = str(params.get("engine", "store"))
    if engine not in ("store", "spark", "postgres"):
        raise ValueError(f"{file}: 'engine' must be store, spark or postgres, not {engine!r}")
    url = str(params.get("engine_url", "") or "")
    resolved = expand_env(url)
    if engine == "postgres" and not resolved.startswith(("postgresql://", "postgres://")):
        raise ValueError(
            f"{file}: 'engine: postgres' needs 'engine_url: postgresql://user@host:5432/db' "
            "(or a ${NAME} holding one; the password from PGPASSWORD or ~/.pgpass, never in "
            "the file)"
        )
    for stage in STAGES:
        section = params.setdefault(stage, {})
        if section is None:
            params[stage] = {}
        elif not isinstance(section, dict):
            raise ValueError(f"{file}: section '{stage}' must be a mapping")
    return params


def stage_parameters(params: dict[str, Any], stage: str) -> dict[str, Any]:
    """Return the papermill parameters of one stage.

    Parameters
    ----------
    params : dict
        Parameters as returned by :func:`load_params`.
    stage : str
        One of :data:`STAGES`.

    Returns
    -------
    dict
        Global keys plus the stage's own section (the section wins on a clash).

    Raises
    ------
    ValueError
        If ``stage`` is unknown.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
    out = {k: v for k, v in params.items() if k not in STAGES and k not in NON_STAGE_SECTIONS}
    out.update(params.get(stage) or {})
    return out


def worker_count(n_jobs: int) -> int:
    """Return the workers an ``n_jobs`` setting asks for: itself when positive, else one per core.

    Parameters
    ----------
    n_jobs : int
        Workers; 0 or less means one per core.

    Returns
    -------
    int
        At least 1.
    """
    return n_jobs if n_jobs > 0 else os.cpu_count() or 1


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_env(value: str) -> str:
    """Replace ``${NAME}`` references by the environment's values (for secrets such as database URLs).

    Parameter files hold the reference, never the secret: manifests, executed
    notebooks and logs show ``${DATABASE_URL}``, and the value is read here, at
    the moment of connecting.

    Parameters
    ----------
    value : str
        Text that may hold ``${NAME}`` references.

    Returns
    -------
    str
        The text with every reference replaced.

    Raises
    ------
    ValueError
        If a referenced variable is not set (naming it).
    """

    def repl(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in os.environ:
            raise ValueError(f"environment variable {name} is not set (referenced as ${{{name}}})")
        return os.environ[name]

    return _ENV_REF.sub(repl, value)


_URL_PASSWORD = re.compile(r"^[a-z][a-z0-9+.-]*://[^/@:\s]*:([^@/\s]+)@", re.IGNORECASE)
_SECRET_WORDS = r"password|passwd|pwd|pass|secret|token|api_?key|access_?key|secret_?key"
# ?password=..., &token=... in a URL; password=... in a key=value connection string
_INLINE_SECRET = re.compile(rf"(?:^|[?&;\s])(?:{_SECRET_WORDS})=([^&;\s]+)", re.IGNORECASE)
# a parameter named like a secret (password:, encryption_key:), not one naming a variable
_SECRET_KEY = re.compile(
    rf"(?:^|_)(?:{_SECRET_WORDS}|encryption_key|private_key|salt)$", re.IGNORECASE
)


def check_no_secrets(params: Any, where: str = "") -> None:
    """Refuse parameters that hold a secret literally (it would end up in manifests and notebooks).

    Refused: a password in a URL (``postgresql://u:pw@h``, ``mysql://:pw@h``), in a
    query string (``?password=``, ``&token=``) or a ``key=value`` connection string
    (``host=h password=pw``), and any parameter named like a secret (``password``,
    ``encryption_key``, ``api_key``...). Values that are only ``${NAME}`` references
    to the environment are fine.

    Parameters
    ----------
    params : Any
        Loaded parameters (nested dicts and lists).
    where : str
        Key path, for the message.

    Raises
    ------
    ValueError
        Naming the key that holds a secret.
    """
    hint = (
        "; put it (or the whole URL) in an environment variable and write ${NAME} instead, "
        'e.g. url: "${DATABASE_URL}" (or use ~/.pgpass / PGPASSWORD)'
    )
    if isinstance(params, dict):
        for k, v in params.items():
            key = f"{where}.{k}" if where else str(k)
            if (
                _SECRET_KEY.search(str(k))
                and isinstance(v, str | int | float)
                and not isinstance(v, bool)
                and str(v).strip()
                and not _ENV_REF.fullmatch(str(v).strip())
            ):
                raise ValueError(f"{key} holds a secret in the parameter file{hint}")
            check_no_secrets(v, key)
    elif isinstance(params, list):
        for i, v in enumerate(params):
            check_no_secrets(v, f"{where}[{i}]")
    elif isinstance(params, str):
        m = _URL_PASSWORD.match(params)
        if m and not _ENV_REF.fullmatch(m.group(1)):
            raise ValueError(f"{where} holds a database password in the parameter file{hint}")
        for m in _INLINE_SECRET.finditer(params):
            if not _ENV_REF.fullmatch(m.group(1)):
                raise ValueError(f"{where} holds a password or token in the parameter file{hint}")
