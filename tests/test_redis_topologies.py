"""The Redis topologies the tests start (tests/redis_topologies.py) are what they claim,
as a client sees them through redis-py: the cluster's shape and routing, failovers and
healing, the Sentinel setup, ACL users and TLS."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis
import redis.cluster
import redis.sentinel
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests import secrets_scan
from tests.redis_topologies import HOST, RedisCluster, RedisSecured, RedisSentinel


def _once(url: str | None = None, **options: object) -> redis.Redis:
    """A client trying each command once: redis-py's retries delay a refusal by seconds."""
    options = {"retry": Retry(NoBackoff(), 0), "socket_timeout": 2, **options}
    return redis.Redis.from_url(url, **options) if url else redis.Redis(host=HOST, **options)


@pytest.fixture
def prefix() -> str:
    return f"topology-test-{uuid.uuid4().hex}:"


@pytest.fixture
def cluster_client(redis_cluster: RedisCluster) -> Iterator[redis.cluster.RedisCluster]:
    with redis_cluster.client() as client:
        yield client


def test_the_cluster_has_three_primaries_each_with_a_replica(redis_cluster: RedisCluster) -> None:
    shards = redis_cluster.shards()
    assert len(shards) == 3
    assert len({node for replicas in shards.values() for node in replicas}) == 3
    for primary, replicas in shards.items():
        # What each node says of itself, not only what the cluster bus says of it.
        assert primary.run("ROLE")[0] == "master"
        (replica,) = replicas
        assert replica.run("ROLE")[:3] == ["slave", HOST, primary.port]
    assert redis_cluster.problems() == []


def test_the_cluster_urls_reach_it(redis_cluster: RedisCluster) -> None:
    scheme, seeds = redis_cluster.url().split("://")
    assert scheme == "redis+cluster"
    assert sorted(seeds.split(",")) == sorted(redis_cluster.seeds)
    assert len(redis_cluster.seeds) == 6
    # One node is enough for a client to find the whole cluster.
    with redis.cluster.RedisCluster.from_url(redis_cluster.url("redis")) as client:
        assert len(client.get_primaries()) == 3


def test_each_primary_serves_the_keys_of_its_hash_tag(
    redis_cluster: RedisCluster, cluster_client: redis.cluster.RedisCluster, prefix: str
) -> None:
    tags = redis_cluster.tags()
    assert set(tags) == set(redis_cluster.primaries())
    for primary, tag in tags.items():
        key = f"{prefix}{{{tag}}}:a"
        cluster_client.set(key, primary.port)
        assert redis_cluster.primary_for(key) is primary
        # On that node itself: a node answers MOVED for a key of a slot it does not serve.
        assert primary.run("GET", key) == str(primary.port)
    assert redis_cluster.flush_prefix(prefix) == 3
    assert all(cluster_client.get(f"{prefix}{{{tag}}}:a") is None for tag in tags.values())


def test_healing_starts_what_a_test_left_down(redis_cluster: RedisCluster) -> None:
    primary = redis_cluster.primaries()[1]
    (replica,) = redis_cluster.replicas_of(primary)
    redis_cluster.kill(replica)
    assert redis_cluster.problems()
    redis_cluster.heal()  # what the fixture does after every test
    assert replica.alive
    assert redis_cluster.replicas_of(primary) == [replica]
    assert redis_cluster.problems() == []


def _sentinel_addresses(url: str) -> tuple[list[tuple[str, int]], str]:
    scheme, rest = url.split("://")
    assert scheme == "redis+sentinel"
    hosts, name = rest.split("/")
    return [(host, int(port)) for host, port in (h.split(":") for h in hosts.split(","))], name


def test_every_sentinel_names_the_master_and_its_replica(redis_sentinel: RedisSentinel) -> None:
    addresses, name = _sentinel_addresses(redis_sentinel.url())
    assert len(addresses) == 3
    master, replica = redis_sentinel.master(), redis_sentinel.replica()
    assert master is not replica
    for address in addresses:  # one by one: each must know them, not only the first
        sentinel = redis.sentinel.Sentinel([address], socket_timeout=2)
        assert sentinel.discover_master(name) == (HOST, master.port)
        assert sentinel.discover_slaves(name) == [(HOST, replica.port)]
    assert master.run("ROLE")[0] == "master"
    assert replica.run("ROLE")[:3] == ["slave", HOST, master.port]


def test_only_the_acl_user_with_its_password_gets_in(redis_acl: RedisSecured) -> None:
    assert redis_acl.url().startswith(f"redis://gateway:{redis_acl.password}@")
    with _once(redis_acl.url()) as client:
        assert client.ping()
    wrong = _once(redis_acl.url(password="not-the-password"))
    with wrong, pytest.raises(redis.AuthenticationError, match="invalid username-password"):
        wrong.ping()
    # The default user is off: its password is no way in, nor is no password.
    default = _once(port=redis_acl.port, password=redis_acl.password)
    with default, pytest.raises(redis.AuthenticationError, match="invalid username-password"):
        default.ping()
    anonymous = _once(port=redis_acl.port, protocol=2)  # RESP2: no HELLO, a bare PING
    with anonymous, pytest.raises(redis.AuthenticationError, match="Authentication required"):
        anonymous.ping()
    # Found in any gateway's log or /metrics, it fails the session.
    assert redis_acl.password in secrets_scan.REGISTRY.secrets


def test_tls_needs_the_test_ca_and_a_client_certificate(redis_tls: RedisSecured) -> None:
    tls = redis_tls.tls
    assert tls is not None
    url = redis_tls.url()
    assert url.startswith(f"rediss://gateway:{redis_tls.password}@")
    files = redis_tls.tls_config()
    ca, cert, key = files["ca_file"], files["cert_file"], files["key_file"]
    with _once(url, ssl_ca_certs=ca, ssl_certfile=cert, ssl_keyfile=key) as client:
        assert client.ping()
    credentials = {"username": redis_tls.username, "password": redis_tls.password}
    with _once(port=redis_tls.port, **credentials, **redis_tls.tls_options()) as client:
        assert client.execute_command("ACL", "WHOAMI") == b"gateway"
    untrusted = _once(
        url, ssl_ca_certs=str(tls.untrusted_ca_file), ssl_certfile=cert, ssl_keyfile=key
    )
    with untrusted, pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        untrusted.ping()
    without_certificate = _once(url, ssl_ca_certs=ca)
    with without_certificate, pytest.raises(redis.ConnectionError):
        without_certificate.ping()
    plain = _once(port=redis_tls.port, username="gateway", password=redis_tls.password)
    with plain, pytest.raises(redis.ConnectionError):
        plain.ping()
