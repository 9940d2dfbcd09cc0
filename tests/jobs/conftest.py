"""Fixtures shared by the job tests: real workers on a real Redis and store."""

import pytest

from crowdtune.store.reads import StoreReader
from crowdtune.store.writer import initialise
from tests.faces.conftest import fake_api  # noqa: F401  the local fake social-network API


@pytest.fixture
def running(settings, redis_conn, workers):
    """A new store with its single writer and a worker for light work and generation; a reader of it."""
    initialise(settings.store_path)
    workers.start_together(("--store",), ("--queues", "control,default"), conn=redis_conn)
    return StoreReader(settings.store_path)
