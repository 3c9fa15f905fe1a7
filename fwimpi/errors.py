"""The one exception hierarchy of fwimpi."""


class FwimpiError(Exception):
    """Base class of every error fwimpi raises on purpose."""


class ConfigError(FwimpiError):
    """Bad user input (job spec, model file, CLI argument).

    The message is one line that starts with the field path, e.g.
    ``simulation_configuration.tensor_order: must be 1..10, got 0``. The CLI turns it into
    exit status 2 before anything is written.
    """


class NumericalError(FwimpiError):
    """A computation produced non-finite values (a wavefield that blew up, a NaN misfit or
    gradient): the job stops and records no product."""
