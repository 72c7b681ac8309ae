"""`Lifecycle`: the start/stop shape of a service's background helpers (cluster sync, member lease, leader election,
status writer). Both services start them before their loop and stop them in reverse order at exit."""

from __future__ import annotations

from typing import Protocol


class Lifecycle(Protocol):
    """A background helper with start/stop."""

    def start(self) -> None: ...

    def stop(self) -> None: ...
