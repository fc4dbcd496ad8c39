from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers import (
    ServerProcess,
    standard_config,
    start_gateway,
    start_mock_upstream,
    write_config,
)


@pytest.fixture(scope="session")
def upstream() -> Iterator[ServerProcess]:
    server = start_mock_upstream()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def gateway(
    upstream: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    config = write_config(tmp_path_factory.mktemp("gw"), standard_config(upstream.url))
    server = start_gateway(config)
    yield server
    server.stop()
