"""Whether a run may write a table in keyed-hash mode (``hash_key_conn_id``): one check for every
table that holds numbers either in clear or as ``phone_hash`` + ``hash_key_id``.

Two steps. :func:`check_hash_mode` runs before the run reads or fetches anything: a table made
in the other mode is refused, and so is a table hashed under another key, unless the mode
rebuilds it. That check runs before the writer takes the table's lock, so another run may re-key
the table between the check and the write: :func:`hash_key_recheck` gives the writer a
``before_commit`` that looks again, inside the write's transaction and under the lock, after the
change: the table must then hold only this run's ``hash_key_id``, else the change rolls back. A
mode that rebuilds the table needs no second look: whatever came in between, the rebuilt table
holds only this run's rows, hashed under its key.

A run in clear needs no second look: a table that became hashed meanwhile lacks the clear
columns, and the writer refuses it (:class:`~.ddl.TableShapeError`) before it changes anything.

Import-light (the operators that name their :class:`HashModeRules` are parsed with every DAG):
SQLAlchemy loads inside the functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from airflow_provider_smspartner.exceptions import SmsPartnerConfigError

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from airflow_provider_smspartner.sql.apply import BeforeCommit, WriteSummary
    from airflow_provider_smspartner.sql.names import TableName
    from airflow_provider_smspartner.utils.hash_key import HashKey

#: The columns of a hashed table: the hash, and the name of the key it was made with.
HASHED_COLUMNS = ("phone_hash", "hash_key_id")


@dataclass(frozen=True)
class HashModeRules:
    """What differs between the tables that keyed-hash mode writes.

    :param clear_column: The column that marks a table made in clear (``phone_number`` for the
        stop list, ``phone_e164`` for contacts); a hashed table has ``phone_hash`` and
        ``hash_key_id`` instead.
    :param why_no_rekey: Why the other modes cannot change a table's key, as a clause that
        follows "because" (e.g. what happens to the rows the run keeps).
    :param rebuild_modes: The modes that rebuild the whole table, hence may change its key.
    """

    clear_column: str
    why_no_rekey: str
    rebuild_modes: tuple[str, ...] = ("replace",)


def check_hash_mode(
    hook: Any, table: TableName, key: HashKey | None, mode: str, rules: HashModeRules, log: Any = None
) -> str | None:
    """Refuse a run whose hash mode or key does not fit the existing table; called before the run
    reads or fetches anything, so a refused run has done nothing.

    A table in clear (``rules.clear_column``) refuses a hashed run, a hashed one (``phone_hash``,
    ``hash_key_id``) a run in clear; a table of neither shape is left to the writer, which names
    its missing columns. A table hashed under other keys (its ``DISTINCT hash_key_id``) refuses
    every mode but ``rules.rebuild_modes``.

    :param hook: The destination's ``DbApiHook``.
    :param key: The run's key, None in clear mode.
    :param log: Where to say that a rebuild rotates the key (the task's logger).
    :return: the other key ids a rebuild rotates away from (comma-separated), else None.
    :raises SmsPartnerConfigError: naming the table, its mode or keys, and what to do.
    """
    import sqlalchemy as sa

    from airflow_provider_smspartner.sql.dbapi import unpooled_engine

    engine = unpooled_engine(hook)
    try:
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            if not inspector.has_table(table.name, schema=table.schema):
                return None
            columns = {str(c["name"]).lower() for c in inspector.get_columns(table.name, schema=table.schema)}
            clear = rules.clear_column in columns
            hashed = set(HASHED_COLUMNS) <= columns and not clear
            _check_shape(table, key, rules, hashed=hashed, clear=clear)
            if key is None or not hashed:
                return None
            others = stored_key_ids(conn, table) - {key.key_id}
    finally:
        engine.dispose()
    if not others:
        return None
    if mode not in rules.rebuild_modes:
        raise _other_keys_error(table, key, others, mode, rules)
    rotated = ", ".join(sorted(others))
    if log is not None:
        log.info(
            "Key rotation: %s is hashed with key id(s) %s; %s rebuilds it under key id %s",
            table,
            rotated,
            mode,
            key.key_id,
        )
    return rotated


def hash_key_recheck(
    table: TableName, key: HashKey | None, mode: str, rules: HashModeRules
) -> BeforeCommit | None:
    """The writer's ``before_commit`` that checks, after the change and before the commit, that
    the table holds only ``key``'s ``hash_key_id``: another run that re-keyed it after
    :func:`check_hash_mode` is caught there, and the change rolls back. None in clear mode, and
    for ``rules.rebuild_modes``: a rebuilt table holds only this run's rows, each hashed under
    ``key`` (or holding no number), so the look (a scan of the whole table) could find nothing.

    :return: a callable ``(conn, summary)`` raising :class:`SmsPartnerConfigError`, or None.
    """
    if key is None or mode in rules.rebuild_modes:
        return None
    return partial(_recheck, table, key, mode, rules)


def _recheck(
    table: TableName, key: HashKey, mode: str, rules: HashModeRules, conn: Connection, _: WriteSummary
) -> None:
    others = stored_key_ids(conn, table) - {key.key_id}
    if others:
        raise _other_keys_error(table, key, others, mode, rules, during_write=True)


def stored_key_ids(conn: Connection, table: TableName) -> set[str]:
    """``SELECT DISTINCT hash_key_id`` of ``table`` on ``conn`` (inside whatever transaction it
    has open), NULLs left out."""
    import sqlalchemy as sa

    stored = sa.column("hash_key_id", sa.String())
    query = sa.select(stored).select_from(sa.table(table.name, schema=table.schema))
    return {str(row[0]) for row in conn.execute(query.where(stored.is_not(None)).distinct())}


def _check_shape(
    table: TableName, key: HashKey | None, rules: HashModeRules, *, hashed: bool, clear: bool
) -> None:
    """Refuse a run in clear into a hashed table, or a hashed run into a table in clear."""
    if key is None and hashed:
        raise SmsPartnerConfigError(
            f"Table {table} holds hashed numbers (phone_hash): a run in clear would mix modes (it writes "
            f"{rules.clear_column}); set hash_key_conn_id to the key connection it was made with, or write "
            "to another table. Nothing was written."
        )
    if key is not None and clear:
        raise SmsPartnerConfigError(
            f"Table {table} holds numbers in clear ({rules.clear_column}), not hashes: a hashed run "
            f"(hash_key_conn_id={key.conn_id!r}) cannot write it; drop the table (its numbers are in "
            "clear) or write to another table. Nothing was written."
        )


def _other_keys_error(
    table: TableName,
    key: HashKey,
    others: set[str],
    mode: str,
    rules: HashModeRules,
    during_write: bool = False,
) -> SmsPartnerConfigError:
    """The refusal of a table hashed under ``others``: before the run, or (``during_write``) found
    after the change, when another run wrote the table under another key meanwhile."""
    listed = ", ".join(sorted(others))
    rebuild = " or ".join(f"mode={m!r}" for m in rules.rebuild_modes)
    why = f"{mode} cannot change the key, because {rules.why_no_rekey}. "
    if not during_write:
        return SmsPartnerConfigError(
            f"Table {table} is hashed with key id(s) {listed}, not {key.key_id!r} (connection "
            f"{key.conn_id!r}): {why}Run once with {rebuild} to rebuild the table under the new key, "
            "or use the old key. Nothing was written."
        )
    return SmsPartnerConfigError(
        f"Table {table} holds rows hashed with key id(s) {listed} besides {key.key_id!r} (connection "
        f"{key.conn_id!r}) once this run's {mode} is applied: another run wrote them after this run "
        f"checked the table. {why}Write the table under one key "
        f"(run once with {rebuild} to rebuild it under a new one). This run's change was rolled back: "
        "nothing was written."
    )
