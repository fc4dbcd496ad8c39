"""The production files: Dockerfile, the compose files, deploy/nginx.conf and
deploy/kubernetes.

No container engine is needed: the compose files are validated by the compose
CLI, the nginx config by ``nginx -t``, and then that very config runs in a
host nginx (bound to 127.0.0.1) in front of the session gateway, to show a
stream passes through it as it is produced. The cluster compose file's
one-shot script forms a cluster of host redis-servers started with its nodes'
flags. The Kubernetes manifests are validated against the Kubernetes schemas
(kubernetes-validate ships them), and their config against the gateway's own
check. Missing tools fail the test with what to install;
``scripts/test-setup.sh`` installs them.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import redis
import yaml
from redis.cluster import RedisCluster

from tests.nginx import (
    NGINX_CONF,
    SETUP_HINT,
    NginxProcess,
    local_nginx_conf,
    nginx_argv,
    nginx_in_front,
)
from tests.servers import ROOT, TEST_KEY, ServerProcess, free_port, wait_for

COMPOSE_FILE = ROOT / "docker-compose.yml"
CLUSTER_COMPOSE_FILE = ROOT / "deploy" / "compose.cluster.yml"
CLUSTER_INIT = ROOT / "deploy" / "redis-cluster-init.sh"
KUBERNETES_DIR = ROOT / "deploy" / "kubernetes"
# The oldest Kubernetes the manifests are written for.
KUBERNETES_VERSION = "1.30"
DOCKERFILE = ROOT / "Dockerfile"

STREAM_BODY = {
    "model": "up-chat",
    "messages": [{"role": "user", "content": "hi"}],
    "stream": True,
    "mock": {"chunks": 10, "tokens_per_s": 10},
}
AUTH = {"Authorization": f"Bearer {TEST_KEY}"}


def _run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kwargs)


# --- docker-compose.yml -------------------------------------------------------


def _compose_command() -> list[str]:
    if shutil.which("docker") and _run(["docker", "compose", "version"]).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.fail(f"neither `docker compose` nor `docker-compose` is installed: {SETUP_HINT}")


def _words(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else list(command)


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


@pytest.mark.parametrize(
    "compose_file", [COMPOSE_FILE, CLUSTER_COMPOSE_FILE], ids=["single", "cluster"]
)
def test_compose_file_validates(compose_file: Path) -> None:
    cmd = [*_compose_command(), "-f", str(compose_file), "config", "-q"]
    # Validation needs no engine, and must not depend on the caller's secrets.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "OPENAI_"))}
    result = _run(cmd, cwd=ROOT, env=env)
    assert result.returncode == 0, f"{shlex.join(cmd)} failed:\n{result.stdout}{result.stderr}"


def test_compose_file_wires_the_stack() -> None:
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    services = compose["services"]
    assert set(services) == {"redis", "gateway", "nginx"}

    redis = services["redis"]
    assert redis["image"].startswith("redis:7")
    assert "--appendonly yes" in " ".join(_words(redis["command"]))
    volume = next(v for v in redis["volumes"] if v.split(":")[1] == "/data")
    assert volume.split(":")[0] in compose["volumes"], "redis /data should be a named volume"
    assert "redis-cli" in redis["healthcheck"]["test"]

    gateway = services["gateway"]
    assert gateway["build"] == "."
    words = " ".join(_words(gateway["command"]))
    assert words.startswith("gateway serve")
    assert "--workers 2" in words
    assert "--host 0.0.0.0" in words
    assert "--port 8080" in words
    env = _environment(gateway)
    assert env["REDIS_URL"] == "redis://redis:6379/0"
    assert env["GATEWAY_MASTER_KEY"] == "${GATEWAY_MASTER_KEY:-}"
    assert env["OPENAI_API_KEY"] == "${OPENAI_API_KEY:-}"
    assert gateway["depends_on"]["redis"]["condition"] == "service_healthy"
    assert gateway["restart"] == "unless-stopped"
    grace = re.fullmatch(r"(\d+)s", gateway["stop_grace_period"])
    assert grace, gateway["stop_grace_period"]
    assert int(grace.group(1)) > 30, "must outlast the gateway's 30 s drain"
    assert "ports" not in gateway, "only nginx is published"

    nginx = services["nginx"]
    assert nginx["image"].startswith("nginx:")
    assert "./deploy/nginx.conf:/etc/nginx/nginx.conf:ro" in nginx["volumes"]
    assert nginx["ports"] == ["127.0.0.1:8080:8080"]


# --- deploy/compose.cluster.yml ----------------------------------------------

REDIS_NODES = [f"redis-{n}" for n in range(1, 7)]


def _flags(words: list[str]) -> dict[str, str]:
    """``redis-server --name value ...`` as {name: value}."""
    assert words[0] == "redis-server", words
    assert len(words) % 2 == 1, words
    assert all(w.startswith("--") for w in words[1::2]), words
    return dict(zip((w[2:] for w in words[1::2]), words[2::2], strict=True))


def test_cluster_compose_file_wires_the_stack() -> None:
    compose = yaml.safe_load(CLUSTER_COMPOSE_FILE.read_text())
    services = compose["services"]
    assert set(services) == {*REDIS_NODES, "redis-cluster-init", "gateway", "nginx"}
    here = CLUSTER_COMPOSE_FILE.parent  # compose resolves relative paths from here

    for name in REDIS_NODES:
        node = services[name]
        assert node["image"].startswith("redis:7"), name
        flags = _flags(_words(node["command"]))
        assert flags["cluster-enabled"] == "yes", name
        assert flags["appendonly"] == "yes", name
        # Redirects must name a host the gateways resolve: the node's service name.
        assert flags["cluster-announce-hostname"] == name
        assert flags["cluster-preferred-endpoint-type"] == "hostname", name
        volume = next(v for v in node["volumes"] if v.split(":")[1] == "/data")
        assert volume.split(":")[0] in compose["volumes"], f"{name} /data: a named volume"
        assert "redis-cli" in node["healthcheck"]["test"], name
    volumes = {next(v for v in services[n]["volumes"]).split(":")[0] for n in REDIS_NODES}
    assert len(volumes) == len(REDIS_NODES), "each node needs its own /data"

    init = services["redis-cluster-init"]
    assert init["image"].startswith("redis:7")
    mount = next(v for v in init["volumes"] if v.endswith(":ro"))
    source, target, _ = mount.split(":")
    assert (here / source).resolve() == CLUSTER_INIT
    assert _words(init["command"]) == ["sh", target]
    assert _environment(init)["NODES"].split() == [f"{n}:6379" for n in REDIS_NODES]
    assert init["depends_on"] == {n: {"condition": "service_healthy"} for n in REDIS_NODES}
    assert init["restart"] == "no", "a one-shot: restarting it would never end"

    gateway = services["gateway"]
    assert (here / gateway["build"] / "Dockerfile").resolve() == DOCKERFILE
    words = " ".join(_words(gateway["command"]))
    assert words.startswith("gateway serve")
    assert "--workers 2" in words
    assert "--host 0.0.0.0" in words
    assert "--port 8080" in words
    assert gateway["deploy"]["replicas"] >= 2
    env = _environment(gateway)
    url = env["REDIS_URL"]
    assert url.startswith("redis+cluster://"), url
    seeds = url.removeprefix("redis+cluster://").split(",")
    assert len(seeds) >= 2, url
    assert all(seed.split(":")[0] in REDIS_NODES and seed.endswith(":6379") for seed in seeds)
    assert env["GATEWAY_MASTER_KEY"] == "${GATEWAY_MASTER_KEY:-}"
    assert env["OPENAI_API_KEY"] == "${OPENAI_API_KEY:-}"
    assert gateway["depends_on"] == {
        "redis-cluster-init": {"condition": "service_completed_successfully"}
    }
    grace = re.fullmatch(r"(\d+)s", gateway["stop_grace_period"])
    assert grace, gateway["stop_grace_period"]
    assert int(grace.group(1)) > 30, "must outlast the gateway's 30 s drain"
    assert "ports" not in gateway, "only nginx is published"

    # nginx balances over every replica: its upstream names the gateway service,
    # which resolves to each of them.
    nginx = services["nginx"]
    conf_mount = next(v for v in nginx["volumes"] if ":/etc/nginx/nginx.conf" in v)
    assert (here / conf_mount.split(":")[0]).resolve() == NGINX_CONF
    (upstream,) = re.findall(r"upstream gateway \{(.*?)\}", NGINX_CONF.read_text(), re.S)
    servers = re.findall(r"^\s*server\s+([^;\s]+)", upstream, re.M)
    assert servers == ["gateway:8080"], servers
    assert nginx["ports"] == ["127.0.0.1:8080:8080"]
    assert nginx["depends_on"] == {"gateway": {"condition": "service_healthy"}}


def _redis_server() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: apt-get install redis-server")
    return binary


@pytest.fixture
def cluster_nodes(tmp_path: Path) -> Iterator[list[int]]:
    """Six host redis-servers run with the compose file's node flags, on 127.0.0.1,
    each announcing ``localhost`` where the compose nodes announce their service name."""
    services = yaml.safe_load(CLUSTER_COMPOSE_FILE.read_text())["services"]
    procs: list[subprocess.Popen[bytes]] = []
    ports: list[int] = []
    try:
        for name in REDIS_NODES:
            port = free_port()
            workdir = tmp_path / name
            workdir.mkdir()
            flags = {
                **_flags(_words(services[name]["command"])),
                "cluster-announce-hostname": "localhost",
                "port": str(port),
                # Not port + 10000, which may be taken or past 65535.
                "cluster-port": str(free_port()),
                "bind": "127.0.0.1",
                "dir": str(workdir),
                "save": "",
            }
            argv = [_redis_server(), *(w for k, v in flags.items() for w in (f"--{k}", v))]
            log = (workdir / "redis.log").open("wb")
            procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))
            log.close()
            ports.append(port)
        for port in ports:
            client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
            wait_for(f"redis-server on {port}", lambda c=client: _pings(c))
            client.close()
        yield ports
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def _run_cluster_init(ports: list[int]) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "NODES": " ".join(f"localhost:{port}" for port in ports),
        "WAIT_SECONDS": "60",
    }
    result = subprocess.run(
        ["sh", str(CLUSTER_INIT)], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, f"redis-cluster-init.sh failed:\n{result.stdout}{result.stderr}"
    return result


def _node(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5, decode_responses=True)


def _primaries(port: int) -> list[tuple[int, int, str, int]]:
    """CLUSTER SLOTS as the node at ``port`` sees it: (first, last, host, port) of each primary."""
    with _node(port) as client:
        slots = client.execute_command("CLUSTER SLOTS")
    return sorted((int(first), int(last), str(p[0]), int(p[1])) for first, last, p, *_ in slots)


def _roles(ports: list[int]) -> dict[int, tuple[str, int | None]]:
    """Each node's own replication role, and the port of its primary for a replica."""
    roles: dict[int, tuple[str, int | None]] = {}
    for port in ports:
        with _node(port) as client:
            role = client.execute_command("ROLE")
        roles[port] = (role[0], int(role[2]) if role[0] == "slave" else None)
    return roles


def test_cluster_init_forms_the_cluster_once(cluster_nodes: list[int]) -> None:
    first = _run_cluster_init(cluster_nodes)
    assert "cluster_state:ok on every node" in first.stdout
    assert "already formed" not in first.stdout

    primaries = _primaries(cluster_nodes[0])
    assert [(lo, hi) for lo, hi, _, _ in primaries] == [(0, 5460), (5461, 10922), (10923, 16383)]
    # Redirects name the announced host, as the compose nodes' name theirs.
    assert {host for _, _, host, _ in primaries} == {"localhost"}
    roles = _roles(cluster_nodes)
    assert sorted(port for port, (role, _) in roles.items() if role == "master") == sorted(
        port for _, _, _, port in primaries
    )
    followed = sorted(of for role, of in roles.values() if role == "slave")
    assert followed == sorted(port for _, _, _, port in primaries), "one replica each"

    # A client outside the nodes follows the redirects to the announced name.
    with RedisCluster(
        host="127.0.0.1", port=cluster_nodes[0], socket_timeout=5, decode_responses=True
    ) as client:
        written = {f"deploy-test-{i}": str(i) for i in range(20)}
        slots = {client.keyslot(key) for key in written}
        assert all(any(lo <= s <= hi for s in slots) for lo, hi, _, _ in primaries)
        for key, value in written.items():
            client.set(key, value)

        # Run again, as every `up` does: nothing is formed anew, nothing lost.
        again = _run_cluster_init(cluster_nodes)
        assert "already formed" in again.stdout
        assert "cluster_state:ok on every node" in again.stdout
        assert _primaries(cluster_nodes[0]) == primaries
        assert _roles(cluster_nodes) == roles
        assert {key: client.get(key) for key in written} == written


# --- Dockerfile ---------------------------------------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def test_dockerfile_runs_the_gateway_as_non_root() -> None:
    instructions = _dockerfile_instructions()
    final = instructions[max(i for i, (op, _) in enumerate(instructions) if op == "FROM") :]
    assert final[0] == ("FROM", "python:3.11-slim")
    users = [arg for op, arg in final if op == "USER"]
    assert users, "the image should switch to a non-root USER"
    assert users[-1] not in ("root", "0")
    assert ("EXPOSE", "8080") in final
    cmd = [arg for op, arg in final if op == "CMD"]
    assert json.loads(cmd[-1]) == ["gateway", "serve", "--host", "0.0.0.0", "--port", "8080"]
    assert any(op == "RUN" and "pip install ." in arg for op, arg in instructions)


def _healthcheck_code() -> str:
    (check,) = [arg for op, arg in _dockerfile_instructions() if op == "HEALTHCHECK"]
    argv = json.loads(check[check.index("CMD") + 3 :])
    assert argv[:2] == ["python", "-c"], "the slim image has no curl: check with python"
    return argv[2]


def test_dockerfile_healthcheck_probes_health(gateway: ServerProcess) -> None:
    code = _healthcheck_code()
    assert "127.0.0.1:8080/health" in code
    alive = _run([sys.executable, "-c", code.replace(":8080/", f":{gateway.port}/")])
    assert alive.returncode == 0, alive.stderr
    dead = _run([sys.executable, "-c", code.replace(":8080/", f":{free_port()}/")])
    assert dead.returncode != 0


# --- deploy/nginx.conf --------------------------------------------------------


def test_nginx_accepts_the_config(tmp_path: Path) -> None:
    conf = local_nginx_conf(tmp_path, [free_port()], free_port())
    result = _run([*nginx_argv(tmp_path, conf), "-t"])
    assert result.returncode == 0, f"nginx -t rejected deploy/nginx.conf:\n{result.stderr}"
    assert "test is successful" in result.stderr


def test_nginx_config_is_set_up_for_streams() -> None:
    directives = {
        " ".join(line.split()).rstrip(";")
        for line in NGINX_CONF.read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    }
    for expected in (
        "proxy_buffering off",
        "proxy_cache off",
        "proxy_http_version 1.1",
        'proxy_set_header Connection ""',
        "chunked_transfer_encoding on",
        "gzip off",
        "client_max_body_size 8m",
        "keepalive 64",
        "access_log /dev/stdout gateway",
        "error_log stderr warn",
    ):
        assert expected in directives, f"deploy/nginx.conf lacks `{expected};`"
    for timeout in ("proxy_read_timeout", "proxy_send_timeout"):
        (value,) = [d.split()[1] for d in directives if d.startswith(timeout + " ")]
        assert int(value.removesuffix("s")) >= 600, f"{timeout} {value} would cut long streams"


@pytest.fixture(scope="module")
def nginx(
    gateway: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NginxProcess]:
    with nginx_in_front(tmp_path_factory.mktemp("nginx"), gateway.port) as server:
        yield server


def test_stream_through_nginx_arrives_as_it_is_produced(nginx: NginxProcess) -> None:
    arrivals: list[tuple[float, str]] = []
    with httpx.Client(timeout=10) as client:
        started = time.monotonic()
        with client.stream(
            "POST", f"{nginx.url}/v1/chat/completions", json=STREAM_BODY, headers=AUTH
        ) as response:
            assert response.status_code == 200, response.read()
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers.get("x-request-id")
            assert response.headers.get("x-gateway-served-by") == "upstream/mock-chat"
            assert "content-length" not in response.headers
            assert "content-encoding" not in response.headers  # httpx asks for gzip
            for line in response.iter_lines():
                if line.startswith("data:"):
                    arrivals.append((time.monotonic() - started, line))

    assert arrivals, f"no data lines arrived; nginx log:\n{nginx.logs()}"
    assert arrivals[-1][1] == "data: [DONE]"
    chunks = [json.loads(line[5:]) for _, line in arrivals[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    content = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    assert len([c for c in content if c]) == 10

    first, last = arrivals[0][0], arrivals[-1][0]
    timeline = ", ".join(f"{t:.2f}" for t, _ in arrivals)
    # Ten tokens at 10/s: the first at once, the last about 0.9 s later.
    # A buffering proxy would deliver them all together at the end.
    assert first < 0.6, f"first chunk after {first:.2f}s (arrivals: {timeline})"
    assert last >= 0.8, f"whole stream in {last:.2f}s (arrivals: {timeline})"
    assert last - first >= 0.6, f"chunks arrived bunched together (arrivals: {timeline})"


def test_request_id_is_shared_through_nginx(nginx: NginxProcess) -> None:
    body = {**STREAM_BODY, "stream": False, "mock": {}}
    sent = httpx.post(
        f"{nginx.url}/v1/chat/completions",
        json=body,
        headers={**AUTH, "X-Request-Id": "deploy-test-42"},
        timeout=10,
    )
    assert sent.status_code == 200, sent.text
    assert sent.headers["x-request-id"] == "deploy-test-42"
    assert sent.json()["object"] == "chat.completion"

    # Without one, nginx makes the id, and its access log names the id the
    # gateway answered with.
    made = httpx.get(f"{nginx.url}/v1/models", headers=AUTH, timeout=10)
    assert made.status_code == 200, made.text
    request_id = made.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    deadline = time.monotonic() + 5
    while f"request_id={request_id}" not in nginx.logs():
        assert time.monotonic() < deadline, f"{request_id} not in nginx's log:\n{nginx.logs()}"
        time.sleep(0.05)


# --- deploy/kubernetes --------------------------------------------------------


def _manifests() -> dict[str, dict[str, Any]]:
    """Every document under deploy/kubernetes, by kind."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(KUBERNETES_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                assert doc["kind"] not in found, f"two {doc['kind']}s"
                found[doc["kind"]] = doc
    return found


def _yaml_files() -> list[Path]:
    return sorted(KUBERNETES_DIR.glob("*.yaml"))


def test_kubernetes_example_is_complete() -> None:
    assert set(_manifests()) == {
        "Secret",
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
    }
    assert sorted(KUBERNETES_DIR.glob("*.yml")) == [], "use .yaml, as the others"


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: p.name)
def test_kubernetes_manifest_validates_against_the_schema(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        if doc is None:
            continue
        try:
            # Strict: a field the API does not know (a typo) fails too.
            used = kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.absolute_path)
            pytest.fail(f"{path.name}: {doc['kind']} at {where or '<top>'}: {exc.message}")
        assert used == KUBERNETES_VERSION, f"kubernetes-validate has no {KUBERNETES_VERSION} schema"


def test_kubernetes_validation_refuses_an_unknown_field() -> None:
    deployment = _manifests()["Deployment"]
    _container(deployment)["readinessProbe"]["httpGet"]["paht"] = "/ready"
    with pytest.raises(kubernetes_validate.ValidationError, match="paht"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _port(container: dict[str, Any], port: int | str) -> int:
    """A probe's or Service's port, by number or by the container port's name."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    return number


def _configmap_file(manifests: dict[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """The path GATEWAY_CONFIG names in the pod, and the ConfigMap's file there, parsed."""
    deployment = manifests["Deployment"]
    container = _container(deployment)
    env = {e["name"]: e for e in container["env"]}
    path = env["GATEWAY_CONFIG"]["value"]
    directory, name = path.rsplit("/", 1)
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == directory]
    assert "subPath" not in mount, "a subPath mount never sees an edit of the ConfigMap"
    (volume,) = [
        v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]
    ]
    configmap = manifests["ConfigMap"]
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    return path, yaml.safe_load(configmap["data"][name])


def test_kubernetes_probes_answer_on_the_gateway(gateway: ServerProcess) -> None:
    container = _container(_manifests()["Deployment"])
    command = _words(container["command"])
    assert command[:2] == ["gateway", "serve"]
    assert command[command.index("--host") + 1] == "0.0.0.0"
    port = int(command[command.index("--port") + 1])

    expected = {"readinessProbe": "/ready", "livenessProbe": "/health", "startupProbe": "/health"}
    for probe, path in expected.items():
        check = container[probe]["httpGet"]
        assert check["path"] == path, f"{probe} should ask {path}, not {check['path']}"
        assert _port(container, check["port"]) == port, probe
        # What the kubelet would see: these paths answer 200 on a running gateway.
        answer = httpx.get(gateway.url + check["path"], timeout=10)
        assert answer.status_code == 200, (probe, answer.text)


def test_kubernetes_shutdown_outlasts_the_drain() -> None:
    manifests = _manifests()
    pod = manifests["Deployment"]["spec"]["template"]["spec"]
    container = _container(manifests["Deployment"])
    _, config = _configmap_file(manifests)
    drain = config["server"]["drain_seconds"]
    assert drain == 30

    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep", pre_stop
    sleep = int(pre_stop[1])
    assert 1 <= sleep < drain, "long enough for the endpoints to drop the pod"
    # The grace period counts from the preStop hook; uvicorn waits drain_seconds
    # + 1 after SIGTERM (gateway/cli.py), then the workers exit.
    grace = pod["terminationGracePeriodSeconds"]
    assert grace > sleep + drain + 1, f"grace {grace}s cuts streams: {sleep}s + {drain}s drain"


def test_kubernetes_secrets_come_from_the_secret() -> None:
    manifests = _manifests()
    secret = manifests["Secret"]
    env = {e["name"]: e for e in _container(manifests["Deployment"])["env"]}
    for name in ("GATEWAY_MASTER_KEY", "REDIS_URL", "OPENAI_API_KEY"):
        assert "value" not in env[name], f"{name} must not be written in the Deployment"
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"], name
        assert ref["key"] in secret["stringData"], name
    assert set(secret["stringData"]) == {"GATEWAY_MASTER_KEY", "REDIS_URL", "OPENAI_API_KEY"}
    assert all("REPLACE-ME" in v for v in secret["stringData"].values()), "placeholders only"


def _mebibytes(quantity: str) -> float:
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)(Mi|Gi)", quantity).groups()  # type: ignore[union-attr]
    return float(number) * (1024 if unit == "Gi" else 1)


def test_kubernetes_resources_and_user() -> None:
    deployment = _manifests()["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    assert deployment["spec"]["replicas"] >= 2

    command = _words(container["command"])
    workers = int(command[command.index("--workers") + 1])
    requests, limits = container["resources"]["requests"], container["resources"]["limits"]
    # One worker keeps one core busy.
    assert float(requests["cpu"]) == workers, f"{requests['cpu']} CPU for {workers} workers"
    assert float(limits["cpu"]) >= workers
    # Two workers idle at about 200 MiB together; requests carry bodies of up to 8 MiB.
    assert 256 <= _mebibytes(requests["memory"]) <= _mebibytes(limits["memory"])

    # The Dockerfile's unprivileged user.
    (uid,) = re.findall(r"useradd .*--uid (\d+)", DOCKERFILE.read_text())
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == int(uid)
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    # --workers makes the workers' metrics directory under /tmp at start.
    (tmp,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == tmp["name"]]
    assert "emptyDir" in volume


def test_kubernetes_service_and_budget_select_the_pods() -> None:
    manifests = _manifests()
    deployment = manifests["Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()

    service = manifests["Service"]
    assert service["spec"]["selector"].items() <= labels.items()
    container = _container(deployment)
    command = _words(container["command"])
    (port,) = service["spec"]["ports"]
    assert _port(container, port["targetPort"]) == int(command[command.index("--port") + 1])

    budget = manifests["PodDisruptionBudget"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert 1 <= budget["spec"]["minAvailable"] < deployment["spec"]["replicas"]


def test_kubernetes_config_is_valid_for_the_gateway(tmp_path: Path) -> None:
    manifests = _manifests()
    _, config = _configmap_file(manifests)
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    secret = manifests["Secret"]["stringData"]

    # The environment the pod gets: plain values and the Secret's keys.
    pod_env = {}
    for entry in _container(manifests["Deployment"])["env"]:
        if "value" in entry:
            pod_env[entry["name"]] = entry["value"]
        else:
            pod_env[entry["name"]] = secret[entry["valueFrom"]["secretKeyRef"]["key"]]
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("GATEWAY_", "OPENAI_", "REDIS_URL"))
    }
    base["XDG_DATA_HOME"] = str(tmp_path / "xdg")  # never the user's data directory
    master_key = "sk-" + "k8s-test-master-key-0123456789abcdef"

    def check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        # --config wins over GATEWAY_CONFIG, which names the path inside the pod.
        argv = [sys.executable, "-m", "gateway", "check-config", "--config", str(path)]
        return _run(argv, cwd=ROOT, env={**base, **env})

    with ThreadPoolExecutor(2) as pool:
        as_shipped, replaced = pool.map(
            check, [pod_env, {**pod_env, "GATEWAY_MASTER_KEY": master_key}]
        )

    # Applied without replacing the placeholder, the gateway refuses to start.
    assert as_shipped.returncode == 1, as_shipped.stdout + as_shipped.stderr
    assert "GATEWAY_MASTER_KEY: too short" in as_shipped.stderr, as_shipped.stderr

    output = replaced.stdout + replaced.stderr
    assert replaced.returncode == 0, output
    assert f"# {path}: valid" in replaced.stdout
    assert "# store: redis at" in replaced.stdout
    resolved = yaml.safe_load(replaced.stdout)
    assert resolved["server"]["drain_seconds"] == 30
    assert resolved["server"]["docs"] is False
    assert set(resolved["models"]) == set(config["models"])
    assert master_key not in output
    assert secret["OPENAI_API_KEY"] not in output
