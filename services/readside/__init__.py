"""The read side: the DuckDB projection of the event log (`projection`), the named queries over it
(`queries`), the retention janitor (`janitor`), and `ReadSide`, which hosts them in the ingress
process (DuckDB allows one writer). Callers see read-side errors (`errors`), never DuckDB's."""

from services.readside.errors import (
    BadCursor,
    Busy,
    NotReadOnly,
    ProjectionFailed,
    QueryFailed,
    ReadSideError,
)
from services.readside.host import ReadSide
from services.readside.queries import Scope

__all__ = ["BadCursor", "Busy", "NotReadOnly", "ProjectionFailed", "QueryFailed", "ReadSide", "ReadSideError", "Scope"]
