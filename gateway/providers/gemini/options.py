"""The canonical request's tools, tool choice and options -> the ``tools``,
``toolConfig`` and ``generationConfig`` of a Gemini body (request.py builds the rest).

- ``tools`` (function tools, and the legacy ``functions``) ->
  ``functionDeclarations``, their schemas rewritten by schema.py;
- ``tool_choice`` (or the legacy ``function_call``) ->
  ``functionCallingConfig``: auto -> AUTO, none -> NONE, required -> ANY, a
  named function -> ANY with ``allowedFunctionNames``; ``allowed_tools`` in
  ``required`` mode -> ANY with the names, in ``auto`` mode -> AUTO with only
  the allowed tools declared (Gemini takes names with ANY only);
- temperature, top_p, max_(completion_)tokens, stop, n, seed, the penalties,
  logprobs -> their ``generationConfig`` twins; ``response_format`` json_object
  -> ``responseMimeType: application/json`` (+ ``responseSchema`` from a
  json_schema); ``reasoning_effort`` -> ``thinkingConfig.thinkingBudget``.

Other tool and tool-choice types are refused with a 400 naming them.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import InvalidRequest
from gateway.providers.gemini.schema import function_parameters, response_schema
from gateway.schemas.messages import (
    AllowedToolsChoice,
    FunctionDefinition,
    FunctionTool,
    FunctionToolChoice,
    JSONObjectFormat,
    JSONSchemaFormat,
    ToolName,
)
from gateway.schemas.openai import ChatCompletionRequest

__all__ = ["THINKING_BUDGETS", "add_tools", "generation_config"]

# reasoning_effort -> thinkingConfig.thinkingBudget (tokens): low, medium and high
# as Google's OpenAI-compatible endpoint maps them for budget-based models (Gemini 3
# takes a budget too, in place of its thinkingLevel); "minimal" a small budget,
# "xhigh" the largest every thinking model accepts. A model that cannot think
# less (or at all) answers 400 itself.
THINKING_BUDGETS = {
    "none": 0,
    "minimal": 512,
    "low": 1024,
    "medium": 8192,
    "high": 24576,
    "xhigh": 24576,
}


# ---------------------------------------------------------------- tools


def add_tools(request: ChatCompletionRequest, body: dict[str, Any]) -> None:
    declarations: list[dict[str, Any]] = []
    for j, tool in enumerate(request.tools or ()):
        if not isinstance(tool, FunctionTool):
            raise InvalidRequest(
                f"tools of type '{tool.type}' cannot be sent to this model",
                param=f"tools[{j}].type",
            )
        declarations.append(_declaration(tool.function))
    for function in request.functions or ():
        declarations.append(_declaration(function))

    config: dict[str, Any] | None = None
    choice = request.tool_choice
    if choice is None:
        choice = request.function_call  # legacy: "none", "auto" or {"name": ...}
    if choice == "auto":
        config = {"mode": "AUTO"}
    elif choice == "none":
        config = {"mode": "NONE"}
    elif choice == "required":
        config = {"mode": "ANY"}
    elif isinstance(choice, FunctionToolChoice | ToolName):
        name = choice.function.name if isinstance(choice, FunctionToolChoice) else choice.name
        config = {"mode": "ANY", "allowedFunctionNames": [name]}
    elif isinstance(choice, AllowedToolsChoice):
        allowed = _allowed_names(choice)
        if choice.allowed_tools.mode == "required":
            config = {"mode": "ANY", "allowedFunctionNames": sorted(allowed)}
        else:  # names are only allowed with ANY: the others are not declared instead
            declarations = [d for d in declarations if d["name"] in allowed]
            config = {"mode": "AUTO"}
    elif choice is not None:
        raise InvalidRequest(
            f"a tool_choice of type '{choice.type}' cannot be sent to this model",
            param="tool_choice.type",
        )
    if declarations:
        body["tools"] = [{"functionDeclarations": declarations}]
    if config is not None:
        body["toolConfig"] = {"functionCallingConfig": config}


def _declaration(function: FunctionDefinition) -> dict[str, Any]:
    declaration: dict[str, Any] = {"name": function.name}
    if function.description:
        declaration["description"] = function.description
    if function.parameters:
        parameters = function_parameters(function.parameters)
        if parameters is not None:
            declaration["parameters"] = parameters
    return declaration


def _allowed_names(choice: AllowedToolsChoice) -> set[str]:
    names = set()
    for k, entry in enumerate(choice.allowed_tools.tools):
        function = entry.get("function")
        name = function.get("name") if isinstance(function, dict) else entry.get("name")
        if entry.get("type") != "function" or not isinstance(name, str):
            raise InvalidRequest(
                "only function tools can be allowed for this model",
                param=f"tool_choice.allowed_tools.tools[{k}]",
            )
        names.add(name)
    return names


# ---------------------------------------------------------------- generationConfig


def generation_config(request: ChatCompletionRequest) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if request.temperature is not None:
        config["temperature"] = request.temperature
    if request.top_p is not None:
        config["topP"] = request.top_p
    limit = request.max_completion_tokens or request.max_tokens
    if limit is not None:
        config["maxOutputTokens"] = limit
    stop = request.stop
    if stop:
        config["stopSequences"] = [stop] if isinstance(stop, str) else stop
    if request.n is not None:
        config["candidateCount"] = request.n
    if request.seed is not None:
        config["seed"] = request.seed
    if request.presence_penalty is not None:
        config["presencePenalty"] = request.presence_penalty
    if request.frequency_penalty is not None:
        config["frequencyPenalty"] = request.frequency_penalty
    if request.logprobs:
        config["responseLogprobs"] = True
        if request.top_logprobs:
            config["logprobs"] = request.top_logprobs
    form = request.response_format
    if isinstance(form, JSONObjectFormat):
        config["responseMimeType"] = "application/json"
    elif isinstance(form, JSONSchemaFormat):
        config["responseMimeType"] = "application/json"
        schema = form.json_schema.schema_
        if schema:
            converted = response_schema(schema)
            if converted:
                config["responseSchema"] = converted
    effort = request.reasoning_effort
    if effort is not None:
        budget = THINKING_BUDGETS.get(effort)
        if budget is None:
            known = ", ".join(THINKING_BUDGETS)
            raise InvalidRequest(
                f"reasoning_effort '{effort[:32]}' is not one of {known}",
                param="reasoning_effort",
            )
        config["thinkingConfig"] = {"thinkingBudget": budget}
    return config
