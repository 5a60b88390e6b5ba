"""The forges Narwhal speaks to: their names, in one place.

Webhook endpoints (``/webhooks/FORGE``), commit events, the ``--FORGE-secret``,
``--FORGE-token`` and ``--FORGE-api`` flags and commit statuses all take
their list from here, so a new forge is one line here plus its webhook
reader (``agent.webhooks``) and its status call (``dispatcher.status``).
A leaf module: it imports nothing.
"""

from __future__ import annotations

from typing import Final, Literal

ForgeName = Literal["github", "gitea", "gitlab"]

FORGES: Final[tuple[ForgeName, ...]] = ("github", "gitea", "gitlab")

#: The REST API of a forge's public instance; gitea has none (``--gitea-api``).
FORGE_APIS: Final[dict[str, str]] = {
    "github": "https://api.github.com",
    "gitlab": "https://gitlab.com/api/v4",
}
