"""REDIS_URL's forms, read into what the store connects to, and the cluster's key slots."""

from __future__ import annotations

import random
import string

import pytest
from redis.crc import key_slot as redis_py_key_slot

from gateway.config import ConfigError, RedisTLS, load_settings
from gateway.limits.cluster import ClusterClient, key_slot
from gateway.limits.connect import redis_client
from gateway.limits.resp import RedisConnection
from gateway.limits.sentinel import SentinelClient
from gateway.validation import parse_redis_url

SECRET = "s3cr3t-p@ss"


@pytest.mark.parametrize(
    ("url", "kind", "nodes", "extra"),
    [
        ("redis://127.0.0.1:6379/0", "single", [("127.0.0.1", 6379)], {}),
        ("redis://cache.internal", "single", [("cache.internal", 6379)], {}),
        ("rediss://gw:pw@cache:6380/2", "single", [("cache", 6380)], {"tls": True, "db": 2}),
        ("redis+cluster://a:7000,b:7001,c", "cluster", [("a", 7000), ("b", 7001), ("c", 6379)], {}),
        ("rediss+cluster://a:7000", "cluster", [("a", 7000)], {"tls": True}),
        (
            "redis+sentinel://s1,s2:26380/mymaster",
            "sentinel",
            [("s1", 26379), ("s2", 26380)],
            {"master_name": "mymaster"},
        ),
    ],
)
def test_each_form_names_its_nodes(url: str, kind: str, nodes: list, extra: dict) -> None:
    target = parse_redis_url(url)
    assert (target.kind, list(target.nodes)) == (kind, nodes)
    for name, value in extra.items():
        assert getattr(target, name) == value


def test_credentials_are_read_and_never_shown() -> None:
    target = parse_redis_url(f"redis+sentinel://gateway:{SECRET.replace('@', '%40')}@s1/m")
    assert (target.username, target.password) == ("gateway", SECRET)
    assert SECRET not in repr(target)
    alone = parse_redis_url(f"redis://:{SECRET.replace('@', '%40')}@h:1")
    assert (alone.username, alone.password) == (None, SECRET)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://h:6379", "must start with redis://"),
        ("redis://a:1,b:2", r"use redis\+cluster://"),
        ("redis+cluster://a:1/3", "a cluster has one database"),
        ("redis+sentinel://s1:26379", "name the primary"),
        ("redis://h:0", "invalid host or port"),
        ("redis://h:99999", "invalid port"),
        ("redis://h/zero", "database number"),
        ("redis://h:1?ssl_cert_reqs=none", "server: section"),
        (f"redis://u:{SECRET}x@:1", "invalid host"),
    ],
)
def test_a_bad_url_says_why_without_its_password(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says) as caught:
        parse_redis_url(url)
    assert SECRET not in str(caught.value)


def test_the_config_refuses_a_bad_redis_url_at_load() -> None:
    with pytest.raises(ConfigError, match=r"REDIS_URL: .*use redis\+cluster://"):
        load_settings(None, env={"REDIS_URL": f"redis://u:{SECRET}@a:1,b:2"})


def test_each_form_gets_its_client() -> None:
    assert type(redis_client("redis://h:1/3", timeout=1)) is RedisConnection
    assert type(redis_client("redis+cluster://a:1,b:2", timeout=1)) is ClusterClient
    sentinel = redis_client("redis+sentinel://:pw@s1,s2/main", timeout=1)
    assert type(sentinel) is SentinelClient
    assert "pw" not in sentinel.name
    assert "'main'" in sentinel.name


def test_tls_needs_a_key_with_its_certificate(tmp_path) -> None:
    with pytest.raises(ValueError, match="cert_file and key_file go together"):
        RedisTLS(cert_file=tmp_path / "client.pem")


def _random_key(rng: random.Random) -> str:
    alphabet = string.ascii_letters + string.digits + "{}:_-"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24)))


def test_key_slots_are_redis_s() -> None:
    """The slot of a key is the one Redis Cluster gives it (checked against redis-py's,
    and the specification's own examples)."""
    rng = random.Random(20261207)
    for key in [_random_key(rng) for _ in range(5_000)] + ["{}", "{}x", "a{b}{c}", "{{a}}"]:
        assert key_slot(key) == redis_py_key_slot(key.encode()), key
    assert key_slot("123456789") == 0x31C3 % 16384  # CRC16/XMODEM's check value
    assert key_slot("{user1000}.following") == key_slot("{user1000}.followers")
