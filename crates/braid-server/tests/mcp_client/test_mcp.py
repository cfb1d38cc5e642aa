"""braid as an MCP server, driven by a real MCP client written by others:
the official Python SDK (`mcp` from PyPI). `scripts/mcp-client-test.sh`
installs it and runs these tests with BRAID_BIN set.

Over stdio (`braid mcp --pipelines DIR`) and over streamable HTTP
(`braid serve --mcp`, behind the token): the SDK lists the pipelines as
tools, calls `seed-optimization` and gets its result; a call whose
arguments do not fit is a tool error; without the token HTTP refuses.
"""

import asyncio
import os
import pathlib
import re
import shutil
import subprocess
import tempfile

import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client

BIN = os.environ["BRAID_BIN"]
ROOT = pathlib.Path(__file__).resolve().parents[4]

GREET = """
pipeline: greet
description: Greets someone by name.
inputs:
  name: { type: string, minLength: 1 }
output: greeting
agents:
  hello: { kind: sleep, ms: 1, reads: [name], writes: [greeting], value: "hello there" }
"""


@pytest.fixture()
def pipelines():
    folder = pathlib.Path(tempfile.mkdtemp(prefix="braid-mcp-"))
    shutil.copy(ROOT / "examples" / "seed.yaml", folder / "seed.yaml")
    (folder / "greet.yaml").write_text(GREET)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


async def exercise(session: ClientSession):
    """What a client does with braid's tools, checked."""
    await session.initialize()
    listed = await session.list_tools()
    tools = {t.name: t for t in listed.tools}
    assert {"seed-optimization", "greet"} <= set(tools), tools.keys()
    greet = tools["greet"]
    assert greet.description == "Greets someone by name."
    assert greet.input_schema["properties"]["name"]["type"] == "string"
    assert greet.input_schema["required"] == ["name"]
    # `request` has a default, so it is not required.
    assert tools["seed-optimization"].input_schema["required"] == []

    progress = []

    async def on_progress(done, total, message):
        progress.append((done, total, message))

    result = await session.call_tool(
        "seed-optimization",
        {"request": "How can we cut our LLM spend?"},
        progress_callback=on_progress,
    )
    assert not result.is_error, result
    state = result.structured_content
    # No `output:`: the run's whole state, each agent's write in it.
    for field in ["triage_result", "data_analysis", "optimization_plan", "report"]:
        assert field in state, state
    assert state["request"] == "How can we cut our LLM spend?"
    # One notification per agent as it ended, counting up to all six.
    assert [p[0] for p in progress] == [1, 2, 3, 4, 5, 6], progress
    assert all(p[1] == 6 for p in progress), progress
    assert progress[0][2] == "triage completed", progress

    greeted = await session.call_tool("greet", {"name": "Ada"})
    assert not greeted.is_error, greeted
    assert greeted.structured_content == {"result": "hello there"}

    refused = await session.call_tool("greet", {})
    assert refused.is_error
    text = "".join(c.text for c in refused.content)
    assert "do not fit the pipeline's inputs" in text and "name" in text, text


def test_stdio_lists_calls_and_refuses_bad_arguments(pipelines):
    params = StdioServerParameters(
        command=BIN, args=["mcp", "--pipelines", str(pipelines), "--no-store"]
    )

    async def main():
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                await exercise(session)

    asyncio.run(main())


class Served:
    """`braid serve --mcp` on a free loopback port with a token."""

    def __init__(self, pipelines):
        self.token = "mcp-test-token"
        token_file = pipelines / "token"
        token_file.write_text(self.token)
        self.process = subprocess.Popen(
            [BIN, "serve", "--mcp", "--bind", "127.0.0.1:0", "--pipelines", str(pipelines),
             "--token-file", str(token_file), "--no-store"],
            stderr=subprocess.PIPE,
            text=True,
        )
        for line in self.process.stderr:
            found = re.search(r"serving on (http://[0-9.:]+)", line)
            if found:
                self.url = found.group(1) + "/mcp"
                return
        raise AssertionError("braid serve did not say where it serves")

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=30)


def test_streamable_http_behind_the_token(pipelines):
    served = Served(pipelines)
    try:
        async def main():
            client = create_mcp_http_client(headers={"Authorization": f"Bearer {served.token}"})
            async with client:
                async with streamable_http_client(served.url, http_client=client) as (read, write):
                    async with ClientSession(read, write) as session:
                        await exercise(session)

        asyncio.run(main())

        async def status_without_token():
            async with create_mcp_http_client() as client:
                reply = await client.post(
                    served.url,
                    json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                    headers={"Accept": "application/json, text/event-stream"},
                )
                return reply.status_code

        assert asyncio.run(status_without_token()) == 401

        async def session_without_token():
            async with create_mcp_http_client() as client:
                async with streamable_http_client(served.url, http_client=client) as (read, write):
                    async with ClientSession(read, write) as session:
                        await asyncio.wait_for(session.initialize(), 30)

        # The SDK's own session cannot start either.
        with pytest.raises(BaseException) as refused:
            asyncio.run(session_without_token())
        # (The SDK reports the 401 as an error response to `initialize`.)
        assert "MCPError" in repr(refused.value) or "401" in repr(refused.value), repr(refused.value)
        assert "AssertionError" not in repr(refused.value)
    finally:
        served.stop()
