"""The official ``openai`` npm SDK, under Node, parses the gateway's chat answers and streams."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from tests.servers import ROOT, TEST_KEY, ServerProcess

NODE_DIR = ROOT / "tests" / "node"
SCRIPT = NODE_DIR / "sdk_check.mjs"
SETUP_HINT = "run scripts/test-setup.sh to install Node 20+ and the tests/node packages"


def node_binary() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail(f"node is not on PATH; {SETUP_HINT}")
    if not (NODE_DIR / "node_modules" / "openai" / "package.json").is_file():
        pytest.fail(f"tests/node/node_modules has no openai package; {SETUP_HINT}")
    return node


def run_sdk_check(gateway: ServerProcess, model: str = "up-chat") -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "GATEWAY_"))}
    env.update(GATEWAY_URL=gateway.url, GATEWAY_KEY=TEST_KEY, MODEL=model)
    try:
        proc = subprocess.run(
            [node_binary(), str(SCRIPT.relative_to(ROOT))],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"sdk_check.mjs did not finish in 60 s\nstderr:\n{exc.stderr}\ngateway log:\n{gateway.logs()[-4000:]}"
        )
    assert proc.returncode == 0, (
        f"sdk_check.mjs exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}\n"
        f"gateway log:\n{gateway.logs()[-4000:]}"
    )
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, f"expected one JSON line on stdout, got:\n{proc.stdout}"
    return json.loads(lines[0])


def test_openai_node_sdk_chat_and_stream(gateway: ServerProcess) -> None:
    result = run_sdk_check(gateway)

    assert isinstance(result["text"], str)
    assert result["text"], result
    assert result["streamText"] == result["text"], result

    usage = result["usage"]
    assert usage is not None, f"the last stream chunk carried no usage: {result}"
    assert result["chunks"] > 0, result
    assert usage["completion_tokens"] == result["chunks"], result
    assert usage["prompt_tokens"] > 0, result
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"], result

    assert result["model"] == "up-chat", result
    assert result["streamModel"] == "up-chat", result
