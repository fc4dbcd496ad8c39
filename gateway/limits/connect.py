"""The store's Redis client for a REDIS_URL: one node, a Redis Cluster, or Sentinel.

Each client has the same calls (``execute``, ``evalsha``, ``ping``, ``aclose``)
over the same lean pipelined connection (gateway/limits/resp.py), so the store
does not know which it has. A ``redis://`` URL names one node, which may be a
node of a cluster: ``detect_cluster`` asks it once it answers, and a cluster
node's URL then gets the cluster client with that node as its seed.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from typing import Protocol

from gateway.config import RedisTLS
from gateway.limits.cluster import ClusterClient
from gateway.limits.resp import Credentials, RedisConnection, Script
from gateway.limits.sentinel import SentinelClient
from gateway.validation import parse_redis_url


class RedisClient(Protocol):
    timeout: float

    @property
    def name(self) -> str: ...  # where it connects, without credentials

    async def execute(self, *args: object) -> object: ...
    async def evalsha(
        self, script: Script, keys: Sequence[str], args: Sequence[object]
    ) -> object: ...
    async def ping(self) -> None: ...
    async def aclose(self) -> None: ...


def redis_client(url: str, tls: RedisTLS | None = None, *, timeout: float) -> RedisClient:
    """The client for ``url`` (checked at config load: a bad one is a ``ValueError``)."""
    target = parse_redis_url(url)
    credentials = Credentials(
        target.username,
        target.password,
        tls_context(tls or RedisTLS()) if target.tls else None,
    )
    if target.kind == "cluster":
        return ClusterClient(target.nodes, credentials=credentials, timeout=timeout)
    if target.kind == "sentinel":
        assert target.master_name is not None
        return SentinelClient(
            target.nodes,
            target.master_name,
            credentials=credentials,
            db=target.db,
            timeout=timeout,
        )
    host, port = target.nodes[0]
    return RedisConnection(host, port, credentials=credentials, db=target.db, timeout=timeout)


def tls_context(tls: RedisTLS) -> ssl.SSLContext:
    """Verify the servers against ``ca_file`` (else the system's CAs); present the
    gateway's own certificate when one is set."""
    context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    if tls.cert_file is not None and tls.key_file is not None:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    return context


async def detect_cluster(client: RedisClient) -> RedisClient:
    """``client``, or a cluster client seeded with it when the one node it names is a
    node of a Redis Cluster (it must answer: ``RedisDown`` otherwise)."""
    if not isinstance(client, RedisConnection):
        return client
    info = await client.execute("INFO", "cluster")
    if b"cluster_enabled:1" not in info:  # type: ignore[operator]
        return client
    if client.db:
        raise ValueError(f"{client.name} is a Redis Cluster node: a cluster has no /db")
    seeded = ClusterClient([client.address], credentials=client.credentials, timeout=client.timeout)
    await client.aclose()
    return seeded
