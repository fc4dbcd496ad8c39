"""The ceiling: the cheapest FastAPI route, to tell the machine's speed from the gateway's.

One POST route on /v1/chat/completions reads the body and returns a fixed chat.completion
(the bench's non-stream answer, 16 words) as a plain ``Response``, served as the gateway
is: uvicorn, uvloop + httptools, one worker, no access log. bench/run.py pins it to the
gateway's CPU under the same wrk load as the non-stream scenario at 16 connections; its
CPU per request against the reference machine's 73 µs scales the gateway's figures.

    python bench/ceiling.py --port 9100
"""

from __future__ import annotations

import argparse
import json
import sys

import uvicorn
from fastapi import FastAPI, Request, Response

WORDS = 16  # Scenario's default: the answer the non-stream checker expects

BODY = json.dumps(
    {
        "id": "chatcmpl-ceiling",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "bench",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "".join(f" w{i}" for i in range(WORDS)),
                },
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": WORDS, "total_tokens": 9 + WORDS},
    },
    separators=(",", ":"),
).encode()

app = FastAPI()


@app.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    await request.body()
    return Response(BODY, media_type="application/json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    args = parser.parse_args(argv)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        workers=1,
        access_log=False,
        log_level="warning",
        server_header=False,
        proxy_headers=False,
        timeout_keep_alive=75,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
