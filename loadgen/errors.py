"""The two ways a load-generator run can go wrong."""

from __future__ import annotations


class ConfigError(ValueError):
    """Bad input, found before anything starts: what was wrong and what to do."""


class RunFailed(RuntimeError):
    """The run started and failed. `rank` is the rank at fault when it is known."""

    def __init__(self, message: str, rank: int | None = None) -> None:
        super().__init__(message)
        self.rank = rank


class PeerFailed(RunFailed):
    """This rank is fine, but a collective failed because a peer crashed or hung."""


class InjectedCrash(RunFailed):
    """The crash a profile's crash phase asked for."""
