"""Config ``type`` -> provider class, imported only when a config uses it.

Adding a provider is one module in this package and one line here.
"""

from __future__ import annotations

from importlib import import_module

from gateway.config import ConfigError, Settings
from gateway.providers.base import ProviderFactory

PROVIDERS: dict[str, str] = {
    "openai": "gateway.providers.openai:OpenAIProvider",
    "anthropic": "gateway.providers.anthropic:AnthropicProvider",
    "azure": "gateway.providers.azure:AzureProvider",
    "gemini": "gateway.providers.gemini:GeminiProvider",
    "mock": "gateway.providers.mock:MockProvider",
}


def provider_class(type_name: str) -> ProviderFactory:
    try:
        module_name, _, attr = PROVIDERS[type_name].partition(":")
    except KeyError:
        known = ", ".join(sorted(PROVIDERS))
        raise ConfigError(f"unknown provider type {type_name!r} (known: {known})") from None
    return getattr(import_module(module_name), attr)


def check_types(settings: Settings) -> None:
    """Fail like any other config error when a provider's ``type`` is unknown."""
    problems = []
    for name, provider in settings.providers.items():
        try:
            provider_class(provider.type)
        except ConfigError as exc:
            problems.append(f"{settings.source}: providers.{name}.type: {exc}")
    if problems:
        raise ConfigError("\n".join(problems))
