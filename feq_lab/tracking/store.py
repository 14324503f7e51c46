"""Opening an MLflow store: the one way the lab builds an `MlflowClient`.

Why: MLflow creates a SQLite store's schema on first use (a chain of Alembic migrations, seconds
long) and its tracking and registry stores each run it unguarded; MLflow's own init lock is keyed
on the URI *string*, so `sqlite:///mlflow.db` and `sqlite:////abs/mlflow.db` (or a sweep's first
job and an `mlflow ui` beside it) migrate the same file at once. A migration raced or interrupted
that way leaves `_alembic_tmp_<table>` behind and every later open fails with
"table _alembic_tmp_experiments already exists". Here the first open of a store in a process
happens under an exclusive file lock keyed on the database's resolved path, creates both schemas,
repairs such a leftover when the original table is intact, and fails with one `StoreError` that
names the store; later opens in the process reuse the client.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import sqlite3
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mlflow import MlflowClient

from feq_lab.errors import ConfigError, FeqLabError

log = logging.getLogger(__name__)

ALEMBIC_TMP_PREFIX = "_alembic_tmp_"

_clients: dict[str, MlflowClient] = {}
_clients_lock = threading.Lock()


class StoreError(FeqLabError):
    """The MLflow store cannot be opened (created, migrated or reached); names the store."""

    def __init__(self, uri: str, reason: str):
        self.uri = uri
        super().__init__(f"MLflow store {uri} cannot be opened: {reason}")


def check_uri(uri: str) -> str:
    """The URI stripped; an empty or scheme-less one is a ConfigError on `tracking.uri`."""
    uri = str(uri or "").strip()
    if not uri:
        raise ConfigError("tracking.uri", "empty; use sqlite:///path/mlflow.db or http://host:port")
    if "://" not in uri:
        raise ConfigError("tracking.uri", f"{uri!r} is not a URI (sqlite:///..., http://...)")
    return uri


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (relative paths as given), else None."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):])
    return None


@contextmanager
def _init_lock(db: Path) -> Iterator[None]:
    """Exclusive across processes for one database file, whatever URI spelling reaches it."""
    key = hashlib.sha1(str(db.resolve()).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"feq-mlflow-init-{key}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def repair_interrupted_migration(db: Path) -> list[str]:
    """Drop `_alembic_tmp_<t>` copies left by a raced/killed migration whose table `<t>` still
    exists (Alembic's SQLite batch copy drops `<t>` only after the copy is complete, so the
    original holds every row). A leftover without its original is never touched. Returns the
    dropped tables."""
    if not db.is_file():
        return []
    con = sqlite3.connect(str(db), timeout=30)
    try:
        names = {r[0] for r in con.execute("select name from sqlite_master where type='table'")}
        dropped = [t for t in sorted(names)
                   if t.startswith(ALEMBIC_TMP_PREFIX) and t[len(ALEMBIC_TMP_PREFIX):] in names]
        for table in dropped:
            con.execute(f'drop table "{table}"')
        con.commit()
        return dropped
    finally:
        con.close()


def _client_with_both_stores(uri: str) -> MlflowClient:
    """A client whose tracking and registry schemas exist now, not at some later call."""
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.search_experiments(max_results=1)
    client.search_registered_models(max_results=1)
    return client


def _open(uri: str) -> MlflowClient:
    db = sqlite_path(uri)
    if db is None:  # a server: nothing to create here, but fail now if it cannot be reached
        try:
            return _client_with_both_stores(uri)
        except Exception as exc:
            raise StoreError(uri, f"{type(exc).__name__}: {_first_line(exc)}") from exc
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(uri, f"cannot create {db.parent} ({exc})") from exc
    with _init_lock(db):
        try:
            return _client_with_both_stores(uri)
        except Exception as exc:
            dropped = repair_interrupted_migration(db) if ALEMBIC_TMP_PREFIX in str(exc) else []
            if not dropped:
                raise StoreError(uri, f"{type(exc).__name__}: {_first_line(exc)}") from exc
            log.warning("MLflow store %s: dropped %s left by an interrupted schema migration; "
                        "migrating again", uri, ", ".join(dropped))
            try:
                return _client_with_both_stores(uri)
            except Exception as again:
                raise StoreError(uri, f"{type(again).__name__}: {_first_line(again)}") from again


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def open_store(uri: str) -> MlflowClient:
    """The client of `uri` (tracking and registry on the same store), created once per process;
    the first call creates/migrates the store under the lock. Raises StoreError naming the store."""
    uri = check_uri(uri)
    with _clients_lock:
        client = _clients.get(uri)
        if client is None:
            client = _clients[uri] = _open(uri)
        return client


__all__ = ["StoreError", "check_uri", "open_store", "repair_interrupted_migration", "sqlite_path"]
