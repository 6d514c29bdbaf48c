"""Project error types. `lottery.run` prints any of them as one line and exits with code 2."""


class LotteryError(Exception):
    """Base class for errors caused by the user's input rather than by a bug."""


class ConfigError(LotteryError, ValueError):
    """A config value is wrong: the message names the key and the allowed values."""


class DataError(LotteryError):
    """A dataset is missing or unreadable: the message names the folder and the fix."""


class StoreError(LotteryError):
    """A file in the run store is corrupt, truncated or locked: the message names the file."""
