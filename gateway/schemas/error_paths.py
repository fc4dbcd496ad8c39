"""A request's validation error as the client should read it: where, in its own JSON.

pydantic locates an error inside a union by the branch it tried
(``content.str``, ``temperature.constrained-float``) and inside a tagged union
by the tag (``messages.0.user.content``), and reports one error per branch,
the wrong branches first: ``"stop": [5 strings]`` is first "should be a valid
string", then "at most 4 items". ``for_client`` rewrites the error so that its
first line is the one a person needs, at the path they sent
(``messages[0].content``, ``stop``), found by walking the model's core schema
along the location. It runs only when a request is refused.
"""

from __future__ import annotations

from functools import cache
from typing import Any, NamedTuple

from pydantic import BaseModel
from pydantic_core import ErrorDetails, PydanticCustomError, ValidationError

Loc = tuple[int | str, ...]

# The error an open model (a part or tool of a type the gateway does not know)
# raises for a known ``type``: that type's own model refused the object, and its
# error is the one to show (gateway/schemas/messages.py).
KNOWN_TYPE = "known_type"

# Schemas that only wrap another: an error's location passes through them.
_WRAPPERS = frozenset(
    {
        "model",
        "nullable",
        "default",
        "custom-error",
        "function-after",
        "function-before",
        "function-wrap",
        "definitions",
    }
)


class _Located(NamedTuple):
    error: ErrorDetails
    path: Loc
    unions: tuple[int, ...]  # where in ``path`` a union chose between branches
    weight: int = 2  # between errors as far into the input, the heavier is shown


def for_client(model: type[BaseModel], exc: ValidationError) -> ValidationError:
    """``exc`` with locations in the client's JSON and the most telling error first."""
    root, refs = _schema(model)
    located = [_locate(root, refs, error) for error in exc.errors(include_url=False)]
    best = _best(located)
    ordered = [located[best], *located[:best], *located[best + 1 :]]
    return ValidationError.from_exception_data(
        exc.title,
        [
            {
                "type": PydanticCustomError(e.error["type"], e.error["msg"], e.error.get("ctx")),
                "loc": e.path,
                "input": e.error.get("input"),
            }
            for e in ordered
        ],
        input_type="json",
    )


@cache
def _schema(model: type[BaseModel]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    root = model.__pydantic_core_schema__
    refs: dict[str, dict[str, Any]] = {}
    stack: list[Any] = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if isinstance(node.get("type"), str) and isinstance(node.get("ref"), str):
                refs[node["ref"]] = node
            stack.extend(v for k, v in node.items() if k not in ("metadata", "serialization"))
        elif isinstance(node, list | tuple):
            stack.extend(node)
    return root, refs


def _locate(root: dict[str, Any], refs: dict[str, dict[str, Any]], error: ErrorDetails) -> _Located:
    loc = tuple(error["loc"])
    found = _walk(root, refs, loc)
    path, unions = found if found is not None else (loc, ())
    kind, ctx = error["type"], error.get("ctx") or {}
    weight = 0 if kind == KNOWN_TYPE else 2
    # A tagged union's own refusals name the tag's field, as a missing or bad field.
    if kind in ("union_tag_not_found", "union_tag_invalid"):
        field = str(ctx.get("discriminator", "")).strip("'")
        if field.isidentifier():
            # Below an open model's error at the same field: "type" may be any string
            # there, so "should be a valid string" is truer than the list of tags.
            path, weight = (*path, field), 1
            if kind == "union_tag_not_found":
                error = {**error, "type": "missing", "msg": "Field required", "ctx": {}}
            else:
                tags = str(ctx.get("expected_tags", "")).split(", ")
                expected = " or ".join(filter(None, (", ".join(tags[:-1]), tags[-1])))
                error = {
                    **error,
                    "type": "literal_error",
                    "msg": f"Input should be {expected}",
                    "ctx": {"expected": expected},
                }
    return _Located(error, path, unions, weight)


def _walk(
    node: dict[str, Any], refs: dict[str, dict[str, Any]], loc: Loc
) -> tuple[Loc, tuple[int, ...]] | None:
    """``loc`` without union labels and tags, with where unions were; None if ``loc``
    cannot be read along ``node`` (then the caller keeps pydantic's own)."""
    while True:
        kind = node["type"]
        if kind in _WRAPPERS:
            node = node["schema"]
        elif kind == "definition-ref":
            node = refs[node["schema_ref"]]
        elif kind == "json-or-python":
            node = node["json_schema"]
        elif kind == "lax-or-strict":
            node = node["lax_schema"]
        else:
            break
    if not loc:
        return (), ()
    head, rest = loc[0], loc[1:]
    if kind == "union":  # ``head`` is the label of the branch that failed
        for choice in node["choices"]:
            found = _walk(choice[0] if isinstance(choice, tuple) else choice, refs, rest)
            if found is not None:
                return found[0], (0, *found[1])
        return None
    if kind == "tagged-union":  # ``head`` is the tag
        choice = node["choices"].get(head)
        return None if choice is None else _walk(choice, refs, rest)
    child: dict[str, Any] | None
    if kind == "model-fields":
        child = next(
            (
                field["schema"]
                for name, field in node["fields"].items()
                if field.get("validation_alias", name) == head
            ),
            None,
        )
        if child is None:  # a field kept as sent
            return loc, ()
    elif kind in ("list", "set", "frozenset"):
        if not isinstance(head, int):
            return None
        child = node.get("items_schema")
    elif kind == "dict":
        if rest == ("[key]",):  # the key itself is bad
            return (head,), ()
        child = node.get("values_schema")
    else:  # a leaf: nothing inside it to locate
        return None
    if child is None:
        return loc, ()
    found = _walk(child, refs, rest)
    if found is None:
        return None
    return (head, *found[0]), tuple(i + 1 for i in found[1])


def _best(located: list[_Located]) -> int:
    """The error to show: of the branches of the first error's union, the one that got
    furthest into the input, not one whose type did not even match; of those as far,
    the heaviest (not an open model's refusal of a known type, nor a list of tags
    where any string would do), then the first."""
    first = located[0]
    if not first.unions:
        return 0
    at = first.unions[0]
    prefix = first.path[:at]

    def score(i: int) -> tuple[bool, int, int, int]:
        e = located[i]
        kind = e.error["type"]
        mismatch = len(e.path) in e.unions and (kind.endswith("_type") or kind == "literal_error")
        return (not mismatch, len(e.path), e.weight, -i)

    rivals = [i for i, e in enumerate(located) if at in e.unions and e.path[:at] == prefix]
    return max(rivals, key=score)
