"""The one error type that reaches users (its message names the input and the problem), and ``Stopped``."""


class SeqGANError(Exception):
    """A problem with something the user gave us (a file, a setting, a checkpoint).

    The message is meant to be shown as it is: it names the input (a path, an option) and says what is wrong.
    """


class ConfigError(SeqGANError, ValueError):
    """A configuration value is out of range or inconsistent with another."""


class InputError(SeqGANError):
    """A corpus file, melody file or checkpoint cannot be used."""

    def __init__(self, source: str, problem: str):
        self.source = str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}")


class Stopped(Exception):
    """Training stopped on request (``train.STOP``: SIGTERM or Ctrl-C) before the end of its schedule, with its
    latest.pt saved. Not an error: the message says where it stopped and how to continue."""
