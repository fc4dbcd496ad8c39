"""Real Redis topologies for the tests: a Cluster, a Sentinel setup, and ACL and TLS servers.

Every one is made of redis-server processes of the test run's own, bound to 127.0.0.1
on free ports, each process in a directory of its own under one temporary directory;
``stop()`` ends every process and removes that directory. tests/conftest.py starts each
topology once per session, when a test first asks for it, and hands it to every test
healthy: whatever a test killed or paused is started or resumed again afterwards.

Each helper blocks (a failover takes seconds): a coroutine calls it through
``asyncio.to_thread``, or the event loop, and any gateway served on it, stalls meanwhile.
"""

from __future__ import annotations

import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Self, TypeVar

import redis
import redis.cluster
import redis.sentinel
from redis.backoff import NoBackoff
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.retry import Retry

from tests import secrets_scan
from tests.servers import free_port

if TYPE_CHECKING:
    import trustme

HOST = "127.0.0.1"
# How long a topology may take to settle: a failover itself takes 2-4 s, and a shared
# CI machine that stalls may add several times that.
SETTLE = 30.0

T = TypeVar("T")


class TopologyError(AssertionError):
    """A topology never reached the state a test or a fixture waited for."""


class NotSettled(TopologyError):
    """A topology in between two states, e.g. its sentinels not agreeing yet."""


def until(what: str, check: Callable[[], T | None], timeout: float, why: Callable[[], str]) -> T:
    """Poll ``check`` until it gives something true, and give that; on timeout fail naming
    ``what``, with ``why()`` (the state that was seen) to debug it. Redis errors while
    polling count as not yet: nodes come and go under these waits."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except (redis.RedisError, OSError, NotSettled):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise TopologyError(f"never: {what} (after {timeout:.0f} s)\n{why()}")
        time.sleep(0.05)


def flush_prefix(client: redis.Redis, prefix: str) -> int:
    """Delete the keys under ``prefix`` on one server, one command per key: a cluster node
    refuses a command whose keys lie in different slots. Gives how many were deleted."""
    deleted = 0
    batch: list[str] = []
    for name in client.scan_iter(match=f"{prefix}*", count=500):
        batch.append(name)
        if len(batch) == 500:
            deleted += _unlink(client, batch)
            batch = []
    return deleted + _unlink(client, batch)


def _unlink(client: redis.Redis, names: list[str]) -> int:
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.unlink(name)
    return sum(pipe.execute()) if names else 0


def _tempdir(directory: Path | None, name: str) -> tuple[Path, bool]:
    if directory is not None:
        return directory, False
    return Path(tempfile.mkdtemp(prefix=f"gateway-tests-{name}-")), True


class RedisProcess:
    """One redis-server, a data node or a sentinel, configured by a file in a directory of
    its own; restarted on the same ports with the same files (a cluster node's nodes.conf,
    a sentinel's config as it rewrote it)."""

    def __init__(
        self,
        directory: Path,
        config: Iterable[str],
        *,
        port: int,
        sentinel: bool = False,
        connect: dict[str, Any] | None = None,
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.port = port
        self.sentinel = sentinel
        # How a client reaches it: TLS files, ACL user (redis.Redis keyword arguments).
        self.connect: dict[str, Any] = {"host": HOST, "port": port, **(connect or {})}
        self.config_file = directory / ("sentinel.conf" if sentinel else "redis.conf")
        self.log_file = directory / "redis.log"
        lines = [f"bind {HOST}", f'dir "{directory}"', "daemonize no", *config]
        if not sentinel:
            # A replica's first sync starts at once, not after the default 5 s wait for
            # other replicas to share it.
            lines += ['save ""', "appendonly no", "repl-diskless-sync-delay 0"]
        self._config = "\n".join(lines) + "\n"
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False
        self.reset()

    def reset(self) -> None:
        """Forget what it learnt while running (a sentinel's rewritten config, a cluster
        node's nodes.conf): its next start is its first."""
        assert not self.alive, f"{self} is running"
        self.config_file.write_text(self._config)
        (self.directory / "nodes.conf").unlink(missing_ok=True)

    def __repr__(self) -> str:
        return f"<{'sentinel' if self.sentinel else 'redis'} {HOST}:{self.port}>"

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, *once: str, timeout: float = SETTLE) -> Self:
        """Start it and wait until it answers PING; ``once``: arguments for this run only."""
        assert not self.alive, f"{self} is running already"
        binary = shutil.which("redis-server")
        if binary is None:
            raise TopologyError("redis-server is not installed (apt-get install redis-server)")
        args = [binary, str(self.config_file), *(["--sentinel"] if self.sentinel else []), *once]
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(args, cwd=self.directory, stdout=log, stderr=log)
        self.paused = False
        until(f"{self} answers PING", self._ping, timeout, self.log_tail)
        return self

    def _ping(self) -> bool:
        if not self.alive:
            raise TopologyError(f"{self} exited\n{self.log_tail()}")
        with self.client(socket_timeout=0.5, socket_connect_timeout=0.5) as client:
            return bool(client.ping())

    def client(self, **kw: Any) -> redis.Redis:
        """A client of this process alone, answers decoded. It follows no redirect and
        tries each command once: redis-py's retries would hide a refusal for seconds."""
        options = {
            "socket_timeout": 2,
            "socket_connect_timeout": 2,
            "decode_responses": True,
            "retry": Retry(NoBackoff(), 0),
        }
        return redis.Redis(**{**self.connect, **options, **kw})

    def run(self, *command: Any) -> Any:
        """One command, its raw answer."""
        with self.client() as client:
            return client.execute_command(*command)

    def kill(self) -> None:
        """Gone at once, as in a crash: no shutdown, no goodbye to clients or peers."""
        if self.alive:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(10)

    def pause(self) -> None:
        """Still accepting connections, never answering: a hung server."""
        assert self.proc is not None
        assert self.alive, f"{self} is not running"
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        if self.alive and self.paused:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def stop(self) -> None:
        if not self.alive:
            return
        assert self.proc is not None
        self.resume()
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def log_tail(self, lines: int = 15) -> str:
        try:
            tail = self.log_file.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            tail = []
        return f"--- {self} log:\n" + "\n".join(tail)


class _Topology:
    """Processes under one temporary directory, all stopped and the directory removed by
    ``stop()``, also when starting failed half-way."""

    name = "redis"

    def __init__(self, directory: Path | None) -> None:
        self.directory, self._owns_directory = _tempdir(directory, self.name)
        self.processes: list[RedisProcess] = []

    def start(self) -> Self:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        for process in self.processes:
            process.stop()
        if self._owns_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def logs(self) -> str:
        return "\n".join(process.log_tail() for process in self.processes)


# --- Redis Cluster -------------------------------------------------------------------

Range = tuple[int, int]


class RedisCluster(_Topology):
    """A Redis Cluster of ``primaries`` primaries with ``replicas`` replicas each, built by
    ``redis-cli --cluster create``. Nodes fail over fast: a primary unreachable for
    ``node_timeout_ms`` is failed and its replica elected, whatever its lag."""

    name = "redis-cluster"

    def __init__(
        self,
        directory: Path | None = None,
        *,
        primaries: int = 3,
        replicas: int = 1,
        node_timeout_ms: int = 1000,
    ) -> None:
        super().__init__(directory)
        self.shape = (primaries, replicas)
        self.node_timeout_ms = node_timeout_ms
        # The slots each killed primary served when it was killed, for wait_for_failover.
        self._served: dict[RedisProcess, list[Range]] = {}
        for i in range(primaries * (1 + replicas)):
            port = free_port()
            self.processes.append(
                RedisProcess(
                    self.directory / f"node-{i}",
                    [
                        f"port {port}",
                        # The bus port is chosen too: port + 10000 may be taken or past 65535.
                        f"cluster-port {free_port()}",
                        "cluster-enabled yes",
                        "cluster-config-file nodes.conf",
                        f"cluster-node-timeout {node_timeout_ms}",
                        # A replica cut off from its primary for long (a paused or
                        # restarted node) still takes over: no slot is left without one.
                        "cluster-replica-validity-factor 0",
                        # Each replica stays with its primary: the shape healing restores.
                        "cluster-allow-replica-migration no",
                    ],
                    port=port,
                )
            )

    @property
    def nodes(self) -> list[RedisProcess]:
        return self.processes

    def _start(self) -> None:
        self._create()

    def _create(self) -> None:
        for node in self.nodes:
            node.stop()
            node.reset()
            node.start()
        binary = shutil.which("redis-cli")
        if binary is None:
            raise TopologyError("redis-cli is not installed (apt-get install redis-tools)")
        created = subprocess.run(
            [
                binary,
                "--cluster",
                "create",
                *(node.address for node in self.nodes),
                "--cluster-replicas",
                str(self.shape[1]),
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=SETTLE * 2,
        )
        if created.returncode != 0:
            raise TopologyError(f"redis-cli --cluster create failed:\n{created.stdout}")
        self.wait_healthy()

    # What the cluster says of itself.

    @property
    def seeds(self) -> list[str]:
        """Every node's host:port, as seeds for a client."""
        return [node.address for node in self.nodes]

    def url(self, scheme: str = "redis+cluster") -> str:
        """``redis+cluster://`` with every node as a seed, or ``redis://`` with one node, for
        cluster mode detected at connect."""
        if scheme == "redis+cluster":
            return f"redis+cluster://{','.join(self.seeds)}"
        if scheme == "redis":
            return f"redis://{self._live()[0].address}"
        raise ValueError(f"no {scheme}:// form of this cluster (it has no TLS)")

    def client(self, **kw: Any) -> redis.cluster.RedisCluster:
        """redis-py's cluster client (it follows redirects), answers decoded."""
        nodes = [redis.cluster.ClusterNode(HOST, node.port) for node in self._live()]
        options = {"socket_timeout": 2, "socket_connect_timeout": 2, "decode_responses": True}
        return redis.cluster.RedisCluster(startup_nodes=nodes, **{**options, **kw})

    def node(self, port: int) -> RedisProcess:
        for node in self.nodes:
            if node.port == port:
                return node
        raise KeyError(f"no node of this cluster on port {port}")

    def slots(self, via: RedisProcess | None = None) -> dict[Range, list[RedisProcess]]:
        """Slot ranges -> [primary, *replicas], as a live node (``via``) sees them now."""
        answer = (via or self._live()[0]).run("CLUSTER", "SLOTS")
        return {
            (int(start), int(end)): [self.node(int(serving[1])) for serving in nodes]
            for start, end, *nodes in answer
        }

    def primaries(self) -> list[RedisProcess]:
        return sorted(self.shards(), key=self.nodes.index)

    def replicas_of(self, primary: RedisProcess) -> list[RedisProcess]:
        return self.shards()[primary]

    def shards(self, via: RedisProcess | None = None) -> dict[RedisProcess, list[RedisProcess]]:
        """Each primary serving slots -> its replicas not failed, as a live node (``via``)
        sees them now. Read off CLUSTER NODES: CLUSTER SLOTS leaves out a replica until
        its master has sent it a first write or ping."""
        entries = _cluster_nodes(via or self._live()[0])
        by_id = {entry.id: self.node(entry.port) for entry in entries}
        shards: dict[RedisProcess, list[RedisProcess]] = {}
        for entry in entries:
            if "master" in entry.flags and entry.slots and "fail" not in entry.flags:
                shards[by_id[entry.id]] = []
        for entry in entries:
            primary = by_id.get(entry.primary)
            if "slave" in entry.flags and "fail" not in entry.flags and primary in shards:
                shards[primary].append(by_id[entry.id])
        return shards

    def primary_for(self, key: str) -> RedisProcess:
        """The node serving ``key``'s slot now."""
        via = self._live()[0]
        return self._primary_of_slot(int(via.run("CLUSTER", "KEYSLOT", key)), via)

    def _primary_of_slot(self, slot: int, via: RedisProcess | None = None) -> RedisProcess:
        for (start, end), nodes in self.slots(via).items():
            if start <= slot <= end:
                return nodes[0]
        raise TopologyError(f"no primary serves slot {slot}")

    def tag_on(self, primary: RedisProcess, stem: str = "tag") -> str:
        """A hash tag (``stem`` and a number) whose slot ``primary`` serves: every key
        holding ``{tag}`` is on that primary."""
        return self.first_on(primary, (f"{stem}{i}" for i in range(REDIS_CLUSTER_HASH_SLOTS * 4)))

    def tags(self, stem: str = "tag") -> dict[RedisProcess, str]:
        """A hash tag for each primary."""
        return {primary: self.tag_on(primary, stem) for primary in self.primaries()}

    def first_on(self, primary: RedisProcess, keys: Iterable[str]) -> str:
        """The first of ``keys`` (hash tags honoured) whose slot ``primary`` serves, e.g. the
        first of many made-up key ids that lands on it."""
        ranges = [r for r, nodes in self.slots().items() if nodes[0] is primary]
        for key in keys:
            slot = key_slot(key.encode())
            if any(start <= slot <= end for start, end in ranges):
                return key
        raise TopologyError(f"none of the keys lands on {primary}")

    def flush_prefix(self, prefix: str) -> int:
        """Delete every key under ``prefix`` on every primary."""
        deleted = 0
        for primary in self.primaries():
            with primary.client() as client:
                deleted += flush_prefix(client, prefix)
        return deleted

    # Failures and healing.

    def kill(self, node: RedisProcess) -> None:
        """SIGKILL one node, as in a crash."""
        self._served[node] = [r for r, nodes in self.slots().items() if nodes[0] is node]
        node.kill()

    def restart(self, node: RedisProcess, *, wait: bool = True) -> None:
        """Start a killed node again with its nodes.conf: a primary whose slots were taken
        over meanwhile rejoins as its successor's replica. ``wait``: until the whole
        cluster is healthy again."""
        node.start()
        if wait:
            self.wait_healthy()

    def wait_for_failover(self, old_primary: RedisProcess, timeout: float = SETTLE) -> RedisProcess:
        """Until every slot ``old_primary`` served (when killed) has another primary that
        every live node agrees on, and the cluster state is ok; gives that new primary."""
        served = self._served.get(old_primary)
        assert served, f"{old_primary} was not a primary when killed"

        def promoted() -> RedisProcess | None:
            owners = set()
            for node in self._live():
                if self._info(node)["cluster_state"] != "ok":
                    return None
                owners |= {self._primary_of_slot(start, node) for start, _ in served}
            if len(owners) != 1:
                return None
            new = owners.pop()
            return new if new is not old_primary and new.alive else None

        return until(f"a new primary for {old_primary}'s slots", promoted, timeout, self.report)

    def problems(self) -> list[str]:
        """What keeps the cluster from its healthy shape (every node up, the primaries
        each with their replicas, replication links up, every slot served, every node
        agreeing); empty when healthy."""
        found = [f"{node} is down" for node in self.nodes if not node.alive]
        found += [f"{node} is paused" for node in self.nodes if node.paused]
        if found:
            return found
        views = {}
        for node in self.nodes:
            info = self._info(node)
            if info["cluster_state"] != "ok" or info["cluster_slots_ok"] != str(
                REDIS_CLUSTER_HASH_SLOTS
            ):
                found.append(f"{node}: cluster_state {info['cluster_state']}")
            view = _cluster_nodes(node)
            views[node] = sorted((e.port, sorted(e.flags - {"myself"}), e.primary) for e in view)
            found += [
                f"{node} sees {entry.port} as {','.join(entry.flags)}, {entry.link}"
                for entry in view
                if entry.flags & {"fail", "fail?", "handshake", "noaddr"}
                or entry.link != "connected"
            ]
        if len({str(view) for view in views.values()}) != 1:
            found.append(f"the nodes disagree on the roles: {views}")
        primaries, replicas = self.shape
        shards = self.shards()
        if len(shards) != primaries:
            found.append(f"not {primaries} primaries: {shards}")
        found += [f"{p} has replicas {r}" for p, r in shards.items() if len(r) != replicas]
        for node in self.nodes:
            replication = node.run("INFO", "replication")
            if replication["role"] == "slave" and replication["master_link_status"] != "up":
                found.append(f"{node}: replication link {replication['master_link_status']}")
        return found

    def wait_healthy(self, timeout: float = SETTLE) -> None:
        until("a healthy cluster", lambda: not self.problems(), timeout, self.report)

    def heal(self) -> None:
        """Back to the healthy shape, after whatever a test did: paused nodes resumed, dead
        ones started again (a former primary rejoins as a replica). A cluster that does
        not heal is made anew on the same ports, so a client of it keeps its seeds."""
        try:
            for node in self.nodes:
                node.resume()
                if not node.alive:
                    node.start()
            self.wait_healthy()
        except TopologyError:
            self._create()
        self._served.clear()

    def report(self) -> str:
        """The state of every node, to debug a wait that failed."""
        lines = []
        for node in self.nodes:
            try:
                lines.append(f"{node} sees:\n{node.run('CLUSTER', 'NODES')}")
            except (redis.RedisError, OSError) as exc:
                lines.append(f"{node}: {exc!r}")
        return "\n".join(lines) + "\n" + self.logs()

    def _live(self) -> list[RedisProcess]:
        live = [node for node in self.nodes if node.alive and not node.paused]
        if not live:
            raise TopologyError("no node of the cluster is running")
        return live

    @staticmethod
    def _info(node: RedisProcess) -> dict[str, str]:
        text: str = node.run("CLUSTER", "INFO")
        return dict(line.split(":", 1) for line in text.split() if ":" in line)


class _ClusterNode(NamedTuple):
    """One line of CLUSTER NODES."""

    id: str
    port: int
    flags: set[str]  # myself, master, slave, fail?, fail, handshake, noaddr...
    primary: str  # a replica's primary's id, "-" for a primary
    link: str  # connected or disconnected
    slots: list[str]


def _cluster_nodes(via: RedisProcess) -> list[_ClusterNode]:
    """The cluster as ``via`` sees it now."""
    entries = []
    for line in via.run("CLUSTER", "NODES").splitlines():
        node_id, address, flags, primary, _ping, _pong, _epoch, link, *slots = line.split()
        port = int(address.split("@")[0].rsplit(":", 1)[1])
        entries.append(_ClusterNode(node_id, port, set(flags.split(",")), primary, link, slots))
    return entries


# --- Sentinel ------------------------------------------------------------------------


class RedisSentinel(_Topology):
    """A primary, its replica and three sentinels watching them (quorum 2). A primary
    unreachable for ``down_after_ms`` is failed over to the replica."""

    name = "redis-sentinel"
    master_name = "gwtest"

    def __init__(
        self,
        directory: Path | None = None,
        *,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
    ) -> None:
        super().__init__(directory)
        self.servers: list[RedisProcess] = []
        for role in ("primary", "replica"):
            port = free_port()
            self.servers.append(RedisProcess(self.directory / role, [f"port {port}"], port=port))
        primary = self.servers[0]
        self.sentinels: list[RedisProcess] = []
        for i in range(3):
            port = free_port()
            self.sentinels.append(
                RedisProcess(
                    self.directory / f"sentinel-{i}",
                    [
                        f"port {port}",
                        "sentinel resolve-hostnames no",
                        f"sentinel monitor {self.master_name} {HOST} {primary.port} 2",
                        f"sentinel down-after-milliseconds {self.master_name} {down_after_ms}",
                        f"sentinel failover-timeout {self.master_name} {failover_timeout_ms}",
                    ],
                    port=port,
                    sentinel=True,
                )
            )
        self.processes = [*self.servers, *self.sentinels]
        self._killed: RedisProcess | None = None

    def _start(self) -> None:
        for process in self.processes:
            process.stop()
            process.reset()
        primary, replica = self.servers
        primary.start()
        replica.start("--replicaof", HOST, str(primary.port))
        for sentinel in self.sentinels:
            sentinel.start()
        self.wait_healthy()

    def url(self) -> str:
        hosts = ",".join(sentinel.address for sentinel in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.master_name}"

    def client(self, **kw: Any) -> redis.Redis:
        """redis-py's Sentinel client of the current master, answers decoded."""
        timeouts = {"socket_timeout": 2, "socket_connect_timeout": 2}
        sentinel = redis.sentinel.Sentinel(
            [(HOST, s.port) for s in self._live_sentinels()],
            sentinel_kwargs=timeouts,
            **{**timeouts, "decode_responses": True, **kw},
        )
        return sentinel.master_for(self.master_name)

    def master(self) -> RedisProcess:
        """The data node the (live) sentinels name as the master now; they must agree."""
        answers = {self._master_port(sentinel) for sentinel in self._live_sentinels()}
        if len(answers) != 1:
            raise NotSettled(f"the sentinels disagree on the master: ports {answers}")
        return self._server(answers.pop())

    def replica(self) -> RedisProcess:
        (other,) = (server for server in self.servers if server is not self.master())
        return other

    def flush_prefix(self, prefix: str) -> int:
        with self.master().client() as client:
            return flush_prefix(client, prefix)

    def kill_master(self) -> RedisProcess:
        """SIGKILL the master, as in a crash; gives it."""
        master = self.master()
        master.kill()
        self._killed = master
        return master

    def wait_for_promotion(
        self, old: RedisProcess | None = None, timeout: float = SETTLE
    ) -> RedisProcess:
        """Until every live sentinel names another master than ``old`` (by default the one
        ``kill_master`` killed last) and that one says it is a master; gives it."""
        old = old or self._killed
        assert old is not None, "which master is to be replaced?"

        def promoted() -> RedisProcess | None:
            new = self.master()
            if new is old or not new.alive:
                return None
            return new if new.run("ROLE")[0] == "master" else None

        return until(f"a master in place of {old}", promoted, timeout, self.report)

    def problems(self) -> list[str]:
        """What keeps the setup from its healthy shape (all five up, the sentinels agreeing
        on a master whose replica is in sync, every sentinel knowing the replica and its
        peers); empty when healthy."""
        found = [f"{p} is down" for p in self.processes if not p.alive]
        found += [f"{p} is paused" for p in self.processes if p.paused]
        if found:
            return found
        master = self.master()
        replica = self.replica()
        if master.run("ROLE")[0] != "master":
            found.append(f"{master} is named the master but is not one")
        replication = replica.run("INFO", "replication")
        if (replication.get("master_port"), replication.get("master_link_status")) != (
            master.port,
            "up",
        ):
            found.append(f"{replica} does not replicate {master}: {replication}")
        for sentinel in self.sentinels:
            known = sentinel.run("SENTINEL", "REPLICAS", self.master_name)
            states = {int(d["port"]): d["flags"] for d in map(_pairs, known)}
            if states.get(replica.port) != "slave":
                found.append(f"{sentinel} sees the replicas as {states}")
            try:
                sentinel.run("SENTINEL", "CKQUORUM", self.master_name)
            except redis.ResponseError as exc:
                found.append(f"{sentinel}: {exc}")
        return found

    def wait_healthy(self, timeout: float = SETTLE) -> None:
        until("a healthy sentinel setup", lambda: not self.problems(), timeout, self.report)

    def heal(self) -> None:
        """Back to the healthy shape, after whatever a test did: paused processes resumed,
        dead sentinels started, a dead data node started as the master's replica (the
        sentinels promote the other one if it was the master). A setup that does not
        heal is made anew on the same ports, so a client of it keeps its sentinels."""
        try:
            for process in self.processes:
                process.resume()
            for sentinel in self.sentinels:
                if not sentinel.alive:
                    sentinel.start()
            dead = [server for server in self.servers if not server.alive]
            if len(dead) == 2:
                raise TopologyError("both data nodes are down: nothing to promote")
            if dead:
                master = until("a live master", self._live_master, SETTLE, self.report)
                dead[0].start("--replicaof", HOST, str(master.port))
            self.wait_healthy()
        except TopologyError:
            self._start()

    def _live_master(self) -> RedisProcess | None:
        master = self.master()
        return master if master.alive else None

    def report(self) -> str:
        lines = []
        for sentinel in self.sentinels:
            try:
                lines.append(
                    f"{sentinel} sees master {self._master_port(sentinel)}, replicas "
                    f"{[_pairs(r) for r in sentinel.run('SENTINEL', 'REPLICAS', self.master_name)]}"
                )
            except (redis.RedisError, OSError) as exc:
                lines.append(f"{sentinel}: {exc!r}")
        return "\n".join(lines) + "\n" + self.logs()

    def _master_port(self, sentinel: RedisProcess) -> int:
        _host, port = sentinel.run("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
        return int(port)

    def _server(self, port: int) -> RedisProcess:
        for server in self.servers:
            if server.port == port:
                return server
        raise TopologyError(f"the sentinels name a master on port {port}, not one of ours")

    def _live_sentinels(self) -> list[RedisProcess]:
        live = [s for s in self.sentinels if s.alive and not s.paused]
        if not live:
            raise TopologyError("no sentinel is running")
        return live


def _pairs(answer: list[str] | dict[str, str]) -> dict[str, str]:
    """A sentinel's description of an instance: redis-py gives it as a dict or flat."""
    if isinstance(answer, dict):
        return answer
    return dict(zip(answer[::2], answer[1::2], strict=True))


# --- ACL users and TLS ---------------------------------------------------------------


class TestCA:
    """A certificate authority made for the test run, with a server certificate for
    127.0.0.1 and a client certificate it signed, as PEM files."""

    __test__ = False  # not a test class, whatever its name

    def __init__(self, directory: Path) -> None:
        import trustme  # its cryptography takes a tenth of a second to import: not for every run

        directory.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        self.ca_file = directory / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        self.server_cert_file, self.server_key_file = self._issue(
            ca, directory / "server", HOST, "localhost"
        )
        self.cert_file, self.key_file = self._issue(ca, directory / "client", "gateway-client")
        # Another CA, which signed nothing here: a client trusting only it must refuse.
        self.untrusted_ca_file = directory / "other-ca.pem"
        trustme.CA().cert_pem.write_to_path(str(self.untrusted_ca_file))

    @staticmethod
    def _issue(ca: trustme.CA, stem: Path, *names: str) -> tuple[Path, Path]:
        issued = ca.issue_cert(*names)
        cert, key = stem.with_suffix(".pem"), stem.with_suffix(".key")
        cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
        issued.private_key_pem.write_to_path(str(key))
        return cert, key


class RedisSecured(_Topology):
    """A redis-server that lets in only the ACL user ``username`` with ``password`` (the
    default user is off: no password or a wrong one is refused), over TLS when ``tls``
    (certificates of a ``TestCA``; ``auth_clients``: ``yes`` requires a client
    certificate, ``optional`` accepts one). The password is registered with the
    session's secrets scan: found in any gateway's log or /metrics, it fails the run."""

    name = "redis-secured"
    username = "gateway"

    def __init__(
        self, directory: Path | None = None, *, tls: bool = False, auth_clients: str = "yes"
    ) -> None:
        super().__init__(directory)
        self.password = f"pw-{secrets.token_urlsafe(18)}"
        secrets_scan.register_secret(self.password)
        self.tls = TestCA(self.directory / "certs") if tls else None
        port = free_port()
        config = [
            "user default off",
            f"user {self.username} on >{self.password} ~* &* +@all",
        ]
        connect: dict[str, Any] = {"username": self.username, "password": self.password}
        if self.tls is None:
            config.append(f"port {port}")
        else:
            config += [
                "port 0",
                f"tls-port {port}",
                f'tls-cert-file "{self.tls.server_cert_file}"',
                f'tls-key-file "{self.tls.server_key_file}"',
                f'tls-ca-cert-file "{self.tls.ca_file}"',
                f"tls-auth-clients {auth_clients}",
            ]
            connect |= self.tls_options()
        self.server = RedisProcess(self.directory / "server", config, port=port, connect=connect)
        self.processes = [self.server]

    def _start(self) -> None:
        self.server.start()

    @property
    def port(self) -> int:
        return self.server.port

    def tls_config(self) -> dict[str, str]:
        """The gateway's ``server.redis_tls`` for this server: the test CA, the client
        certificate and its key."""
        assert self.tls is not None, "this server has no TLS"
        return {
            "ca_file": str(self.tls.ca_file),
            "cert_file": str(self.tls.cert_file),
            "key_file": str(self.tls.key_file),
        }

    def tls_options(self) -> dict[str, Any]:
        """redis-py's keyword arguments for TLS with the test CA and client certificate."""
        assert self.tls is not None, "this server has no TLS"
        return {
            "ssl": True,
            "ssl_ca_certs": str(self.tls.ca_file),
            "ssl_certfile": str(self.tls.cert_file),
            "ssl_keyfile": str(self.tls.key_file),
        }

    def url(self, db: int = 0, *, password: str | None = None, username: str | None = None) -> str:
        """``redis://`` or ``rediss://`` with the user's credentials, or others given."""
        scheme = "redis" if self.tls is None else "rediss"
        user = username if username is not None else self.username
        secret = password if password is not None else self.password
        return f"{scheme}://{user}:{secret}@{HOST}:{self.port}/{db}"

    def client(self, **kw: Any) -> redis.Redis:
        return self.server.client(**kw)

    def flush_prefix(self, prefix: str) -> int:
        with self.client() as client:
            return flush_prefix(client, prefix)
