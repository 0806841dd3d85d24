"""A worker class that tests pass as ``worker_class`` by its dotted name."""

from distributed import Worker


class TaggedWorker(Worker):
    """A plain ``distributed.Worker`` under a name that tests can recognize."""
