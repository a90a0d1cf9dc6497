"""What the read side answers instead of success. No DuckDB type leaves `services.readside`:
storage errors are translated here, so the ingress maps read-side errors, not DuckDB's."""

from __future__ import annotations


class ReadSideError(Exception):
    """Base of the read side's errors; the message is worded for the caller."""


class BadCursor(ReadSideError, ValueError):
    """A pagination cursor that this server did not hand out."""


class NotReadOnly(ReadSideError, ValueError):
    """`darkroom ops query` accepts only SELECT statements."""


class QueryFailed(ReadSideError):
    """DuckDB refused or failed a query (bad SQL, interrupted after its time, a storage error)."""


class ProjectionFailed(ReadSideError):
    """Applying the event log (a catch-up or a rebuild) failed in DuckDB."""


class Busy(ReadSideError):
    """As many operator queries as allowed are running already; try again when one ends."""
