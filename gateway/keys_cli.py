"""``gateway keys ...``: the admin API from a terminal.

Talks to a running gateway (``--url``, else ``GATEWAY_URL``, else
http://127.0.0.1:8080) with the master key from ``GATEWAY_MASTER_KEY`` only:
a key on the command line would end up in shell history and process lists.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import httpx

from gateway.schemas.admin import KeyLimits

LIMIT_FIELDS = tuple(KeyLimits.model_fields)  # the admin API's limits, one flag each


def _limit(kind: type) -> Any:
    def parse(text: str) -> Any:
        return None if text.lower() in ("none", "null", "off") else kind(text)

    return parse


def add_parser(sub: argparse._SubParsersAction) -> None:
    keys = sub.add_parser("keys", help="manage gateway keys through a running gateway's admin API")
    keys.add_argument(
        "--url", default=None, help="gateway URL (default: $GATEWAY_URL or http://127.0.0.1:8080)"
    )
    actions = keys.add_subparsers(dest="action", required=True)
    # ``--url`` is also accepted after the action; SUPPRESS keeps one given before it.
    url_after = argparse.ArgumentParser(add_help=False)
    url_after.add_argument("--url", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    def action(name: str, help: str) -> argparse.ArgumentParser:
        return actions.add_parser(name, help=help, parents=[url_after])

    def key_fields(p: argparse.ArgumentParser, *, creating: bool) -> None:
        p.add_argument("--name", required=creating)
        p.add_argument("--models", help="comma-separated allow-list; '*' for all")
        p.add_argument("--rpm", type=_limit(int), default=argparse.SUPPRESS)
        p.add_argument("--tpm", type=_limit(int), default=argparse.SUPPRESS)
        p.add_argument(
            "--max-parallel", dest="max_parallel", type=_limit(int), default=argparse.SUPPRESS
        )
        p.add_argument(
            "--budget-usd", dest="budget_usd", type=_limit(float), default=argparse.SUPPRESS
        )
        p.add_argument(
            "--budget-period", dest="budget_period", type=_limit(str), default=argparse.SUPPRESS
        )
        p.add_argument("--expires-at", dest="expires_at", help="RFC 3339 time, or 'none'")
        p.add_argument("--metadata", help="a JSON object")
        p.add_argument(
            "--log-prompts",
            dest="log_prompts",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="log its requests' messages on gateway.prompts (off by default)",
        )

    key_fields(action("create", "create a key; its secret is printed once"), creating=True)
    lister = action("list", "list keys")
    lister.add_argument("--limit", type=int, default=100)
    lister.add_argument("--after")
    action("show", "show one key").add_argument("id")
    update = action("update", "change a key (a limit of 'none' removes it)")
    update.add_argument("id")
    key_fields(update, creating=False)
    action("revoke", "revoke a key (its record and usage stay)").add_argument("id")
    usage = action("usage", "usage of one key, or of all")
    usage.add_argument("id", nargs="?")
    audit = action("audit", "the audit trail of admin actions, newest first")
    audit.add_argument("--limit", type=int, default=20)
    audit.add_argument("--after", help="the last_id of the page before")
    keys.set_defaults(func=run)


def _body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if args.name is not None:
        body["name"] = args.name
    if args.models is not None:
        body["models"] = [m.strip() for m in args.models.split(",") if m.strip()]
    limits = {f: getattr(args, f) for f in LIMIT_FIELDS if hasattr(args, f)}
    if limits:
        body["limits"] = limits
    if args.expires_at is not None:
        body["expires_at"] = None if args.expires_at.lower() == "none" else args.expires_at
    if args.metadata is not None:
        try:
            body["metadata"] = json.loads(args.metadata)
        except ValueError as exc:
            raise _Usage(f"--metadata is not valid JSON: {exc}") from None
    if args.log_prompts is not None:
        body["log_prompts"] = args.log_prompts
    return body


class _Usage(Exception):
    """A flag the gateway would refuse anyway: said here, before anything is sent."""


def run(args: argparse.Namespace) -> int:
    master = os.environ.get("GATEWAY_MASTER_KEY")
    if not master:
        print("gateway keys: set GATEWAY_MASTER_KEY to the gateway's master key", file=sys.stderr)
        return 2
    url = (args.url or os.environ.get("GATEWAY_URL") or "http://127.0.0.1:8080").rstrip("/")
    try:
        with httpx.Client(
            base_url=url, headers={"authorization": f"Bearer {master}"}, timeout=30
        ) as client:
            response = _send(client, args)
    except _Usage as exc:
        print(f"gateway keys: {exc}", file=sys.stderr)
        return 2
    except httpx.HTTPError as exc:
        print(f"gateway keys: cannot reach {url}: {exc}", file=sys.stderr)
        return 1
    return _show(response, args)


def _send(client: httpx.Client, args: argparse.Namespace) -> httpx.Response:
    action = args.action
    if action == "create":
        return client.post("/admin/keys", json=_body(args))
    if action == "list":
        params = {"limit": args.limit, **({"after": args.after} if args.after else {})}
        return client.get("/admin/keys", params=params)
    if action == "show":
        return client.get(f"/admin/keys/{args.id}")
    if action == "update":
        return client.patch(f"/admin/keys/{args.id}", json=_body(args))
    if action == "revoke":
        return client.delete(f"/admin/keys/{args.id}")
    if action == "audit":
        params = {"limit": args.limit, **({"after": args.after} if args.after else {})}
        return client.get("/admin/audit", params=params)
    return client.get(f"/admin/keys/{args.id}/usage" if args.id else "/admin/usage")


def _show(response: httpx.Response, args: argparse.Namespace) -> int:
    """The answer on stdout, an error on stderr. A reader that leaves early
    (``gateway keys usage | head``) is handled in gateway/cli.py's ``main``."""
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text
        print(f"gateway keys: {response.status_code}: {message}", file=sys.stderr)
        return 1
    if response.status_code == 204:
        print(f"revoked {args.id}")
        return 0
    print(json.dumps(response.json(), indent=2))
    sys.stdout.flush()  # a closed pipe shows here, inside main's handling, not at exit
    if args.action == "create":
        print("# the key above is shown this once: store it now", file=sys.stderr)
    return 0
