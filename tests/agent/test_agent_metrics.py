"""``narwhal agent``'s own ``GET /metrics``: its webhook answers, counted by forge and code.

The agent runs as its daemon composes it (``agent.server.serve_agent``)
with a broker address nothing listens on, so a valid delivery is answered
503 (the forge delivers it again later) without RabbitMQ: the count is of
answers, whatever they were. The scrape must pass ``promtool check metrics``.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess

import httpx

from narwhal.agent.server import serve_agent
from narwhal.config import AgentConfig, AmqpConfig, WebhookConfig
from tests.support.eventually import eventually_async
from tests.support.ports import free_port
from tests.support.webhooks import SECRET, github_request, push_payload


def test_the_agent_counts_its_answers_on_its_own_metrics() -> None:
    config = AgentConfig(
        http_host="127.0.0.1",
        http_port=0,
        amqp=AmqpConfig(
            url=f"amqp://guest:guest@127.0.0.1:{free_port()}/", connect_timeout=1, reconnect_max=1
        ),
        webhooks=WebhookConfig(github_secret=SECRET),
    )

    async def main() -> tuple[list[int], httpx.Response]:
        stop = asyncio.Event()
        said: list[str] = []
        served = asyncio.create_task(serve_agent(config, stop=stop, announce=said.append))
        try:
            await eventually_async(lambda: said or served.done(), what="the agent to listen")
            url = re.search(r"http://\S+", said[0])
            assert url, said
            body, headers = github_request(
                "push", push_payload("https://example.com/a.git", "a" * 40)
            )
            async with httpx.AsyncClient(base_url=url[0], timeout=30) as http:
                answers = [
                    (
                        await http.post("/webhooks/github", content=body, headers=headers)
                    ).status_code,
                    (
                        await http.post(
                            "/webhooks/github",
                            content=body,
                            headers={**headers, "X-Hub-Signature-256": "sha256=00"},
                        )
                    ).status_code,
                    (await http.post("/webhooks/gitlab", content=b"{}")).status_code,
                ]
                scraped = await http.get("/metrics")
        finally:
            stop.set()
            await served
        return answers, scraped

    answers, scraped = asyncio.run(main())
    assert answers == [503, 401, 404]
    assert scraped.status_code == 200
    assert scraped.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = scraped.text
    for line in (
        'narwhal_webhooks_total{forge="github",answer="503"} 1',
        'narwhal_webhooks_total{forge="github",answer="401"} 1',
        'narwhal_webhooks_total{forge="gitlab",answer="404"} 1',
        "narwhal_up 1",
    ):
        assert line in text.splitlines(), text
    tool = shutil.which("promtool")
    assert tool, "promtool is missing: install the Debian package prometheus (scripts/test does)"
    checked = subprocess.run(
        [tool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert (checked.returncode, checked.stdout, checked.stderr) == (0, "", ""), text
