"""Runs through the client against a real server: start and wait, list,
cancel and resume, answer an `input` agent, fork, and the typed errors."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import pytest

from braid_client import (
    AgentReport,
    BadRequest,
    BraidConnectionError,
    BraidTimeout,
    Client,
    Conflict,
    Forbidden,
    NotFound,
    ProtocolError,
    RunReport,
    Unauthorized,
    ValidationError,
)


def two_step(name: str) -> str:
    return f"""
pipeline: {name}
inputs:
  n: {{ type: integer, default: 1 }}
agents:
  first:  {{ kind: sleep, ms: 20, reads: [n], writes: [x], value: 5 }}
  second: {{ kind: sleep, ms: 20, reads: [x], writes: [y], value: {{ ok: true }} }}
"""


def gated(name: str, marker: Path) -> str:
    """`first` completes at once; `gate` waits until `marker` exists."""
    script = f'while [ ! -e "{marker}" ]; do sleep 0.02; done; echo \'{{"opened": true}}\''
    return json.dumps({
        "pipeline": name,
        "agents": {
            "first": {"kind": "sleep", "ms": 1, "writes": ["x"], "value": 1},
            "gate": {"kind": "command", "run": ["sh", "-c", script], "reads": ["x"], "writes": ["opened"]},
            "last": {"kind": "sleep", "ms": 1, "reads": ["opened"], "writes": ["done"], "value": "yes"},
        },
    })


def wait_until(check, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_start_a_run_and_wait_for_it(client: Client, name: str) -> None:
    registered = client.register_pipeline(two_step(name))
    assert registered.name == name and registered.origin == "api"
    assert name in [p.name for p in client.pipelines()]

    run = client.start_run(name, {"n": 3})
    report = client.wait(run.run_id, timeout=30)
    assert isinstance(report, RunReport)
    assert report.run_id == run.run_id and report.pipeline == name
    assert report.status == "completed"
    assert report.state == {"n": 3, "x": 5, "y": {"ok": True}}
    assert list(report.agents) == ["first", "second"]
    first = report.agents["first"]
    assert isinstance(first, AgentReport) and first.status == "completed" and first.attempts == 1
    assert report.agents["second"].start_ms >= first.start_ms + first.duration_ms - 1

    # The API's own wait: the report comes with the answer.
    waited = client.start_run(name, {"n": 4}, wait=True)
    assert waited.report is not None and waited.report.status == "completed"
    assert waited.report.state["n"] == 4

    listed = client.list_runs(pipeline=name)
    assert {r.run_id for r in listed} == {run.run_id, waited.run_id}
    assert all(r.status == "completed" and r.pipeline == name for r in listed)
    assert len(client.list_runs(pipeline=name, limit=1)) == 1
    assert client.list_runs(pipeline=name, status="failed") == []
    # The server filters: by id prefix too, and says who started each run.
    assert [r.run_id for r in client.list_runs(prefix=run.run_id)] == [run.run_id]
    assert all(r.started_by == "api" for r in listed)
    with pytest.raises(BadRequest) as refused:
        client.list_runs(status="bogus")
    assert refused.value.status == 400 and "interrupted" in refused.value.message


def test_wait_times_out_on_a_long_run_then_cancel_and_resume_it(
    client: Client, name: str, tmp_path: Path
) -> None:
    marker = tmp_path / "open"
    client.register_pipeline(gated(name, marker))
    run = client.start_run(name, checkpoint="agent")
    with pytest.raises(BraidTimeout):
        client.wait(run.run_id, timeout=0.5)
    assert client.get_run(run.run_id).status == "running"

    cancelling = client.cancel(run.run_id)
    assert cancelling.run_id == run.run_id and cancelling.status == "cancelling"
    report = client.wait(run.run_id, timeout=30)
    assert report.status == "cancelled"
    assert report.agents["first"].status == "completed"
    assert report.agents["gate"].status != "completed"
    assert "done" not in report.state
    with pytest.raises(Conflict) as finished:
        client.cancel(run.run_id)
    assert finished.value.status == 409 and finished.value.code == "already_finished"

    marker.touch()
    resumed = client.resume(run.run_id)
    assert resumed.run_id == run.run_id
    report = client.wait(run.run_id, timeout=30)
    assert report.status == "completed"
    assert report.state["done"] == "yes" and report.state["opened"] is True
    # `first` kept its result from before; the rest ran.
    assert report.agents["first"].resumed is True
    assert report.agents["gate"].resumed is False

    with pytest.raises(Conflict) as again:
        client.resume(run.run_id)
    assert again.value.code == "cannot_resume"


APPROVAL = """
pipeline: {name}
agents:
  plan: {{ kind: sleep, ms: 1, writes: [plan], value: {{ changes: [resize] }} }}
  approve:
    kind: input
    prompt: "Apply these changes?"
    reads: [plan]
    writes: [approval]
    schema: {{ type: object, properties: {{ approved: {{ type: boolean }} }}, required: [approved] }}
    timeout: 1h
  apply: {{ kind: sleep, ms: 1, reads: [approval], writes: [applied], value: true }}
"""


def test_answer_an_input_agent(client: Client, name: str) -> None:
    client.register_pipeline(APPROVAL.format(name=name))
    started = client.start_run(name, events="summary", wait=True)
    report = started.report
    assert report is not None and report.status == "waiting" and report.finished
    assert report.agents["approve"].status == "waiting"
    assert report.agents["approve"].deadline_ms > time.time() * 1000

    asked = client.get_run(started.run_id).questions
    assert len(asked) == 1
    question = asked[0]
    assert question.agent == "approve" and question.prompt == "Apply these changes?"
    assert question.reads == {"plan": {"changes": ["resize"]}}
    assert question.schema["required"] == ["approved"]

    with pytest.raises(ValidationError) as bad:
        client.answer(started.run_id, "approve", {"approved": "yes please"})
    assert bad.value.status == 422 and bad.value.code == "invalid_answer" and bad.value.problems

    answered = client.answer(started.run_id, "approve", {"approved": True})
    assert answered.run_id == started.run_id and answered.extra.get("answered") is True
    report = client.wait(started.run_id, timeout=30)
    assert report.status == "completed"
    assert report.state["approval"] == {"approved": True} and report.state["applied"] is True

    with pytest.raises(Conflict) as second:
        client.answer(started.run_id, "approve", {"approved": False})
    assert second.value.code == "not_waiting"


def test_fork_a_run_with_a_changed_field(client: Client, name: str) -> None:
    client.register_pipeline(two_step(name))
    parent = client.start_run(name, {"n": 1}, wait=True)
    assert parent.report is not None and parent.report.status == "completed"

    fork = client.fork(parent.run_id, set={"x": 42})
    assert fork.parent_id == parent.run_id and fork.run_id != parent.run_id
    assert fork.rerun == ["second"]
    report = client.wait(fork.run_id, timeout=30)
    assert report.status == "completed"
    assert report.state["x"] == 42 and report.state["y"] == {"ok": True}
    # `first` kept its recorded result (a live report says `resumed`; the
    # store's record, `reused_from`), `second` ran again.
    assert report.agents["first"].resumed or report.agents["first"].reused_from == parent.run_id
    assert not report.agents["second"].resumed and report.agents["second"].attempts == 1
    assert report.parent_id == parent.run_id

    waited = client.fork(parent.run_id, from_="second", wait=True)
    assert waited.report is not None and waited.report.status == "completed"
    assert waited.report.parent_id == parent.run_id
    assert waited.report.state == {"n": 1, "x": 5, "y": {"ok": True}}
    assert waited.report.agents["first"].resumed and not waited.report.agents["second"].resumed


def test_errors_are_typed(client: Client, server, name: str) -> None:
    with pytest.raises(NotFound) as unknown:
        client.get_run("no-such-run")
    assert unknown.value.status == 404 and unknown.value.code == "not_found"
    assert "no-such-run" in unknown.value.message

    with pytest.raises(NotFound):
        client.start_run("no-such-pipeline")

    with pytest.raises(Unauthorized) as refused:
        Client(server.url, token="not-the-token").get_run("anything")
    assert refused.value.status == 401

    with pytest.raises(ValidationError) as invalid:
        client.register_pipeline(f"pipeline: {name}\nagents:\n  a: {{ kind: sleep, ms: 1, reads: [nowhere], writes: [b] }}\n")
    assert invalid.value.status == 422 and invalid.value.code == "invalid_pipeline"
    assert any("nowhere" in p for p in invalid.value.problems)

    client.register_pipeline(two_step(name))
    with pytest.raises(ValidationError) as bad_input:
        client.start_run(name, {"n": "three"})
    assert bad_input.value.code == "invalid_input"
    with pytest.raises(ValidationError) as bad_events:
        client.start_run(name, events="loud")
    assert bad_events.value.code == "invalid_events"


def test_http_agents_are_forbidden_in_registered_pipelines(client: Client, name: str) -> None:
    text = f"pipeline: {name}\nagents:\n  a: {{ kind: http, url: 'http://127.0.0.1:9/x', writes: [b] }}\n"
    with pytest.raises((Forbidden, ValidationError)) as refused:
        client.register_pipeline(text)
    assert refused.value.status in (403, 422)


def test_wait_polls_a_run_another_process_runs_on_the_same_store(
    client: Client, server, name: str, tmp_path: Path
) -> None:
    marker = tmp_path / "open"
    pipeline = tmp_path / "gated.json"
    pipeline.write_text(gated(name, marker))
    cli = subprocess.Popen(
        [server.binary, "run", str(pipeline), "--checkpoint", "agent", "--store", server.store,
         "--no-progress", "--output", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )
    try:
        # The server knows the run only from the store (no events, not in memory).
        wait_until(lambda: client.list_runs(pipeline=name), "the CLI's run in the store")
        run_id = client.list_runs(pipeline=name)[0].run_id
        wait_until(lambda: client.get_run(run_id).agents.get("first", None) is not None
                   and client.get_run(run_id).agents["first"].status == "completed",
                   "`first` checkpointed")
        assert client.get_run(run_id).status == "running"
        with pytest.raises(NotFound):
            next(iter(client.events(run_id)))
        with pytest.raises(BraidTimeout):
            client.wait(run_id, timeout=0.3, poll=0.05)
        marker.touch()
        report = client.wait(run_id, timeout=30, poll=0.05)
        assert report.status == "completed"
        assert report.input == {} and report.checkpoint == "agent"
        assert {a: r.status for a, r in report.agents.items()} == {
            "first": "completed", "gate": "completed", "last": "completed"
        }
        out, err = cli.communicate(timeout=30)
        assert cli.returncode == 0, err
        assert json.loads(out)["run_id"] == run_id
    finally:
        cli.kill()
        cli.wait()


def test_pipelines_register_replace_show_and_delete(client: Client, name: str) -> None:
    created = client.register_pipeline(two_step(name))
    assert created.name == name and created.origin == "api" and created.content_hash
    shown = client.get_pipeline(name)
    assert shown.source == two_step(name) and shown.explain is not None
    listed = {p.name: p for p in client.pipelines()}
    assert listed[name].agents == 2 and listed[name].origin == "api"

    replaced = client.register_pipeline(two_step(name).replace("ms: 20", "ms: 1"))
    assert replaced.content_hash != created.content_hash

    client.delete_pipeline(name)
    assert name not in [p.name for p in client.pipelines()]
    with pytest.raises(NotFound):
        client.delete_pipeline(name)


def test_transport_failures_are_typed(client: Client, server, name: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    with pytest.raises(BraidConnectionError) as refused:
        Client(f"http://127.0.0.1:{port}", token="t").pipelines()
    assert refused.value.status is None

    client.register_pipeline(two_step(name))
    run = client.start_run(name, wait=True)
    small = Client(server.url, token=client.token, max_response_bytes=100)
    with pytest.raises(ProtocolError) as too_big:
        small.get_run(run.run_id)
    assert "100 bytes" in str(too_big.value)
