"""The start/stop shape shared by the emulator's servers and processes."""

from __future__ import annotations

from typing import Self


class Service:
    """Something that starts and stops; as a context manager it starts on entry and always stops on exit."""

    def start(self) -> Self:
        """Start serving; returns ``self``."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop serving and release what ``start`` took (safe to call twice)."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
