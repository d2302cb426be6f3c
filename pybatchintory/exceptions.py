"""Every error pybatchintory raises on purpose derives from :class:`PyBatchintoryError`.

The tree::

    PyBatchintoryError
    ├── ConfigurationError        settings or URLs that cannot work
    │   └── SchemaVersionError    the backend tables' schema version does not fit this library
    ├── InventoryNotOpenError     the inventory was not opened, or was closed
    ├── InvalidArgumentError      a call's arguments are wrong (also a ValueError)
    │   ├── UnknownTableError     the source table does not exist
    │   ├── UnknownColumnError    a named column does not exist or has the wrong type
    │   ├── InvalidFilterError    a filter that is not a mapping, expression or callable
    │   └── HorizonUnavailableError  the exact horizon cannot be proven for the source table
    ├── SourceDataError           a row of the source cannot be batched (NULL or negative weight)
    ├── JobSourceMismatchError    a job is reused with another source, id column or filter
    ├── BatchStateError           a batch is used in a way its state does not allow
    │   └── BatchLostError        the batch's lease was taken over: nothing was recorded
    └── BackendError              the database failed; the driver's error is ``__cause__``
        └── InventoryFileGoneError    the SQLite file was deleted or replaced while open

Each class's docstring is the advice shown to users. Messages never contain passwords:
URLs are rendered with the password hidden.
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "BatchLostError",
    "BatchStateError",
    "ConfigurationError",
    "HorizonUnavailableError",
    "InvalidArgumentError",
    "InvalidFilterError",
    "InventoryFileGoneError",
    "InventoryNotOpenError",
    "JobSourceMismatchError",
    "PyBatchintoryError",
    "SchemaVersionError",
    "SourceDataError",
    "UnknownColumnError",
    "UnknownTableError",
]


class PyBatchintoryError(Exception):
    """Base class of every error raised by pybatchintory."""


class ConfigurationError(PyBatchintoryError):
    """The settings cannot work: check the PYBATCHINTORY_* variables, your .env file
    or the arguments given to ``Inventory``/``configure``."""


class SchemaVersionError(ConfigurationError):
    """The backend tables are at a schema version this pybatchintory cannot use: newer
    than it supports (upgrade pybatchintory), or older and the automatic upgrade was
    refused for lack of privilege (run ``pybatchintory migrate`` as a role that may
    alter the tables). Nothing was written. See docs/migrations.md."""


class InventoryNotOpenError(PyBatchintoryError):
    """The inventory is not open: use ``async with Inventory(...)`` (or ``with
    SyncInventory(...)``), or call ``open()`` first. Batches acquired from an inventory
    that was closed can no longer be finished; their leases run out and they are
    handed out again."""


class InvalidArgumentError(PyBatchintoryError, ValueError):
    """An argument of the call is wrong; nothing was written. The message names it."""


class UnknownTableError(InvalidArgumentError):
    """The source table was not found on the metadata database. Give it as "table" or
    "schema.table", spelled as the database knows it."""


class UnknownColumnError(InvalidArgumentError):
    """A column named in the call does not exist in the source table, or has a type that
    cannot serve (the id column must be an integer, the weight column numeric)."""


class InvalidFilterError(InvalidArgumentError):
    """Filters are a mapping ``{column: value or [values]}``, a SQLAlchemy boolean
    expression, or a callable taking the reflected table and returning one. Raw SQL
    strings must be wrapped in ``sqlalchemy.text()`` so that their use is deliberate."""


class HorizonUnavailableError(InvalidArgumentError):
    """The exact horizon (the default of an incremental job on PostgreSQL) cannot be
    proven for this source table: its id column must take its default from a sequence
    with CACHE 1 (serial, identity or nextval). Fix the table as the message says, or
    choose a settle lag (``settle_column``/``settle_seconds``), or ``horizon=None``.
    Nothing was written."""


class SourceDataError(PyBatchintoryError):
    """A row of the metadata table cannot be batched, such as a NULL or negative weight.
    Fix the row, or restrict the job with a filter; nothing was written."""


class JobSourceMismatchError(PyBatchintoryError):
    """A job identifier is bound to the source table, id column and filter of its first
    acquisition. Use a new job identifier for another source, or reset the job."""


class BatchStateError(PyBatchintoryError):
    """The batch is not in a state that allows this call (for example, it already
    succeeded)."""


class BatchLostError(BatchStateError):
    """This worker no longer owns the batch: its lease expired and the batch was handed
    to another worker, or it was finished elsewhere. Nothing was recorded; the new owner's
    outcome stands. Heartbeat more often, or acquire with a longer ``lease_seconds``."""


class BackendError(PyBatchintoryError):
    """The inventory or metadata database failed. The driver's error is chained as
    ``__cause__``; no batch was half written, and the call can be repeated once the
    database is reachable. If the connection dropped while a finish was being
    committed, the repeat may raise BatchLostError: the first one did land."""


class InventoryFileGoneError(BackendError):
    """The SQLite file of the inventory was deleted or replaced while the inventory was
    open: what it records would go to a file that no longer exists under its name, and
    be lost. Nothing was written. Find out what removed the file; open the inventory
    again to start on the file now at that path."""
