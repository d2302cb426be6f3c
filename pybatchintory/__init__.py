"""pybatchintory: weight-bounded, incremental and backfill batches of data items for
processing jobs, with an inventory of which job processed which item, when, and how.

A job is a :class:`Job`, defined once. Async: :class:`Inventory` and :class:`Batch`. Sync: :class:`SyncInventory`,
:class:`SyncBatch`, and the process-wide :func:`acquire_batch`, :func:`acquire_batches`
and :func:`configure`. Errors: :mod:`pybatchintory.exceptions`.
"""

import logging

from ._metrics import JobGauges
from ._reports import (
    AttemptLog,
    Backlog,
    BatchInfo,
    Coverage,
    CoverageDiff,
    CoverageSegment,
    DiffSegment,
    Forecast,
    JobStatus,
    JobSummary,
    PlannedBatch,
    ResetResult,
    TraceEntry,
)
from .batch import Batch
from .config import Settings
from .exceptions import (
    BackendError,
    BatchLostError,
    BatchStateError,
    ConfigurationError,
    HorizonUnavailableError,
    InvalidArgumentError,
    InvalidFilterError,
    InventoryFileGoneError,
    InventoryNotOpenError,
    JobSourceMismatchError,
    PyBatchintoryError,
    SchemaVersionError,
    SourceDataError,
    UnknownColumnError,
    UnknownTableError,
)
from .inventory import Inventory
from .job import Job, JobOptions
from .sync import (
    SyncBatch,
    SyncInventory,
    acquire_batch,
    acquire_batches,
    configure,
    default_inventory,
)

__version__ = "0.1.0"

# A library configures no logging of its own: the application decides where records go.
logging.getLogger("pybatchintory").addHandler(logging.NullHandler())

__all__ = [
    "AttemptLog",
    "Backlog",
    "BatchInfo",
    "BackendError",
    "Batch",
    "BatchLostError",
    "BatchStateError",
    "ConfigurationError",
    "Coverage",
    "CoverageDiff",
    "CoverageSegment",
    "DiffSegment",
    "Forecast",
    "HorizonUnavailableError",
    "InvalidArgumentError",
    "InvalidFilterError",
    "Inventory",
    "InventoryFileGoneError",
    "InventoryNotOpenError",
    "JobGauges",
    "Job",
    "JobOptions",
    "JobSourceMismatchError",
    "JobStatus",
    "JobSummary",
    "PlannedBatch",
    "PyBatchintoryError",
    "ResetResult",
    "SchemaVersionError",
    "Settings",
    "SourceDataError",
    "SyncBatch",
    "SyncInventory",
    "TraceEntry",
    "UnknownColumnError",
    "UnknownTableError",
    "__version__",
    "acquire_batch",
    "acquire_batches",
    "configure",
    "default_inventory",
]
