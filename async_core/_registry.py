"""The default agent registry: the built-in agents plus those ``settings.agents`` names.

A module of its own because two layers need it: the stream service (its default
registry) and the start-up checks in ``store._cli.preflight``, which must not import
the service (the service imports the store: that was a cycle, issue 12).
"""

from __future__ import annotations

from ._settings import Settings
from .agents import AgentRegistry, load_agents
from .demo import DEMO_AGENT
from .providers import PROVIDER_AGENTS


def default_registry(settings: Settings | None = None) -> AgentRegistry:
    """Return the built-in agents (``demo``, ``ollama``, ``openai``) and ``settings.agents``."""
    registry = AgentRegistry([DEMO_AGENT, *PROVIDER_AGENTS])
    if settings is not None and settings.agents:
        for agent in load_agents(settings.agents):
            registry.register(agent)
    return registry
