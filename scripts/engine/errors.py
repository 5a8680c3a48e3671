"""The one error of the Docker plumbing."""


class EngineUnavailable(RuntimeError):
    """No Docker engine answers and none can be started here; the message says why."""
