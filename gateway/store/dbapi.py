"""Core statements compiled once and run on a pooled DBAPI connection: the audit store's two writes per request.

Each eligibility round trip writes twice (the request before the payer is called, then the answer). Through
``Connection.execute`` SQLAlchemy builds an execution context, a transaction object and a result for every
statement; for these few fixed statements that was about 40 % of the two writes (1.3-1.5 ms -> 0.8 ms per round
trip on a slow machine; the same SQL through sqlite3 alone took 0.45-0.6 ms). Here the statement is still
SQLAlchemy's (its SQL, its dialect's paramstyle and casts) and every value still goes through its column
type's own conversion (JSON, UTC datetimes ...), so a row reads back exactly as if the Core path had written it;
only the per-call machinery is skipped. Errors are raised as SQLAlchemy's (``IntegrityError``,
``OperationalError`` ...), as ``Connection.execute`` would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import Any

from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.exc import DBAPIError, StatementError
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.sql import ClauseElement


class CompiledStatement:
    """One statement compiled for ``dialect``, with the bind and result conversions of its columns' types."""

    def __init__(self, statement: ClauseElement, dialect: Dialect, *, column_keys: Sequence[str] | None = None,
                 results: Sequence[Any] = (), many: bool = False) -> None:
        """``many``: for :meth:`Transaction.execute_many` (an INSERT then returns no generated keys)."""
        compiled = statement.compile(dialect=dialect, column_keys=list(column_keys) if column_keys else None,
                                     for_executemany=many)
        self.sql = str(compiled)
        used = set(compiled.bind_names.values())   # the binds the SQL text names (not every one built on the way)
        binds = {name: bind for name, bind in compiled.binds.items() if name in used}
        self._binds: dict[str, Callable[[Any], Any] | None] = {
            name: bind.type.dialect_impl(dialect).bind_processor(dialect) for name, bind in binds.items()}
        # a positional paramstyle (sqlite3's qmark): each bind's name and conversion in the order the SQL names them
        self._positions: tuple[tuple[str, Callable[[Any], Any] | None], ...] | None = tuple(
            (name, self._binds[name]) for name in compiled.positiontup) if compiled.positional else None
        # values written into the statement itself (``kind == "response"``, ``create_condition=None``) are binds
        # with a value of their own; a ``bindparam("rid")`` is required
        self._fixed = {name: bind.value for name, bind in binds.items() if not bind.required and bind.callable is None}
        # the columns a SELECT returns, in order: each value read back as its type reads it (a UTC datetime ...)
        self._results = [column.type.dialect_impl(dialect).result_processor(dialect, None) for column in results]

    def failed(self, exc: Exception) -> StatementError:
        """What a value no type could convert becomes (in the processor, or in the driver's own adapter, as
        psycopg's JSON is): a StatementError, as ``Connection.execute`` raises, naming no value."""
        return StatementError(f"a value could not be converted for the database ({type(exc).__name__})", self.sql,
                              None, exc, hide_parameters=True)

    def parameters(self, values: Mapping[str, Any]) -> Any:
        """The DBAPI parameters for ``values`` (bind name -> Python value), converted by the column types (None
        too: JSON's is ``'null'``). In one pass, straight into the tuple or dict the driver takes."""
        if self._fixed:
            values = {**self._fixed, **values}
        if self._positions is not None:
            return tuple([values[name] if convert is None else convert(values[name])
                          for name, convert in self._positions])
        binds = self._binds
        return {name: value if (convert := binds[name]) is None else convert(value) for name, value in values.items()}

    def row(self, found: Sequence[Any] | None) -> tuple[Any, ...] | None:
        if found is None:
            return None
        return tuple(p(v) if p is not None else v for p, v in zip(self._results, found, strict=True))


class DBAPIWriter:
    """Runs :class:`CompiledStatement` s in one transaction on a connection from ``engine``'s pool."""

    def __init__(self, engine: Engine, begin: Callable[[PoolProxiedConnection], None] | None = None, *,
                 spare: int = 0) -> None:
        """``begin(pooled_connection)``: how a transaction starts (a SQLite file's ``BEGIN IMMEDIATE``); None: the
        driver begins one itself, as psycopg does (and sqlite3, unless its ``isolation_level`` is None).

        ``spare``: how many connections to keep checked out between transactions, for the next ones. From the
        pool and back was about 60,000 instructions a transaction, a tenth of a round trip's two writes (more
        under gevent, whose locks the pool's queue then takes). Only for a connection that cannot go stale: the
        pool of a server's connections pings each one it hands out (``pool_pre_ping``), a spare is not pinged.
        A failed transaction's connection goes back to the pool; :meth:`close` returns the spares."""
        self.engine = engine
        self.dialect = engine.dialect
        self._begin = begin
        self._error = self.dialect.loaded_dbapi.Error
        self._spares: list[PoolProxiedConnection] = []
        self._spare = spare

    def compile(self, statement: ClauseElement, *, column_keys: Sequence[str] | None = None,
                results: Sequence[Any] = (), many: bool = False) -> CompiledStatement:
        return CompiledStatement(statement, self.dialect, column_keys=column_keys, results=results, many=many)

    def close(self) -> None:
        """Return the spare connections to the pool (before it is disposed of)."""
        while self._spares:
            with suppress(IndexError):   # another thread took the last one meanwhile
                self._spares.pop().close()

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        connection = self._checkout()
        # the driver's own connection: the pool's proxy hands commit() on through __getattr__, after a failed
        # attribute lookup (an AttributeError made and caught) each time
        dbapi_connection = connection.dbapi_connection
        committed = False
        try:
            try:
                if self._begin is not None:
                    self._begin(connection)
                cursor = dbapi_connection.cursor()
                try:
                    yield Transaction(cursor, self._error)
                finally:
                    with suppress(self._error):   # a lost connection's cursor: the error that matters is raised
                        cursor.close()
                dbapi_connection.commit()
                committed = True
            except self._error as exc:
                lost = self.dialect.is_disconnect(exc, connection.driver_connection, None)
                if lost:   # nothing to roll back on a connection that is gone; the pool opens a new one
                    connection.invalidate(exc)
                else:
                    self._rollback(connection)
                raise self._wrapped(exc, lost) from None
            except BaseException:
                self._rollback(connection)
                raise
        finally:
            if committed and len(self._spares) < self._spare:
                self._spares.append(connection)   # kept for the next transaction
            else:
                connection.close()   # back to the pool (an invalidated one is discarded)

    def _checkout(self) -> PoolProxiedConnection:
        """A spare connection, else one from the pool (whose connect events, the pragmas, have run on it)."""
        try:
            return self._spares.pop()   # atomic: two threads never get the same one
        except IndexError:
            pass
        try:
            return self.engine.raw_connection()
        except self._error as exc:   # the database cannot be reached: said as Connection() says it
            raise self._wrapped(exc) from None

    def _rollback(self, connection: Any) -> None:
        try:
            connection.rollback()
        except self._error as exc:
            connection.invalidate(exc)   # a connection that cannot roll back is not handed out again

    def _wrapped(self, exc: Exception, lost: bool = False) -> DBAPIError:
        return DBAPIError.instance(None, None, exc, self._error, hide_parameters=True, dialect=self.dialect,
                                   connection_invalidated=lost)


class Transaction:
    """The cursor of one :meth:`DBAPIWriter.transaction`."""

    def __init__(self, cursor: Any, error: type[Exception]) -> None:
        self.cursor = cursor
        self._error = error   # the driver's own errors: raised as they are, wrapped by the transaction

    def execute(self, statement: CompiledStatement, values: Mapping[str, Any]) -> int:
        """Run ``statement``; how many rows it changed."""
        self._run(statement, self.cursor.execute, lambda: statement.parameters(values))
        return self.cursor.rowcount

    def execute_many(self, statement: CompiledStatement, rows: Sequence[Mapping[str, Any]]) -> None:
        self._run(statement, self.cursor.executemany, lambda: [statement.parameters(values) for values in rows])

    def first(self, statement: CompiledStatement, values: Mapping[str, Any]) -> tuple[Any, ...] | None:
        self._run(statement, self.cursor.execute, lambda: statement.parameters(values))
        return statement.row(self.cursor.fetchone())

    def _run(self, statement: CompiledStatement, call: Callable[[str, Any], Any], parameters: Callable[[], Any]
             ) -> None:
        try:
            call(statement.sql, parameters())
        except self._error:
            raise
        except Exception as exc:   # noqa: BLE001 - whatever a type's processor or the driver's adapter raises
            raise statement.failed(exc) from None
