"""The SQL hook of a connection id (any installed SQL provider), and its engine.

Import-light: Airflow's hook classes and SQLAlchemy load inside the functions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine


def resolve_dbapi_hook(conn_id: str) -> Any:
    """Return the ``DbApiHook`` of connection ``conn_id`` (any SQL provider installed).

    :raises ValueError: when the connection's hook is not a SQL (DbApiHook) hook.
    """
    return resolve_dbapi_connection(conn_id)[1]


def resolve_dbapi_connection(conn_id: str) -> tuple[Any, Any]:
    """Return connection ``conn_id`` and its ``DbApiHook``, for callers that read the connection too.

    :raises ValueError: when the connection's hook is not a SQL (DbApiHook) hook.
    """
    from airflow.providers.common.sql.hooks.sql import DbApiHook
    from airflow.sdk import BaseHook

    conn = BaseHook.get_connection(conn_id)
    hook = conn.get_hook()
    if not isinstance(hook, DbApiHook):
        raise ValueError(
            f"Connection {conn_id!r} is of type {conn.conn_type!r}, whose hook {type(hook).__name__} is not a "
            "SQL database hook (DbApiHook); point the operator at a SQL connection (sqlite, postgres, mysql, ...)."
        )
    return conn, hook


def unpooled_engine(hook: Any) -> Engine:
    """``hook``'s SQLAlchemy engine without a pool: the provider's reads and writes are a few
    transactions each, and every connection closes after its work."""
    from sqlalchemy.pool import NullPool

    engine: Engine = hook.get_sqlalchemy_engine(engine_kwargs={"poolclass": NullPool})
    return engine
