"""Event streams: order and fields, resuming after a sequence number, and
an automatic resume with `Last-Event-ID` when the connection drops mid-run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List

import pytest

from braid_client import Client, Event, NotFound


def chatty(name: str, marker: Path) -> str:
    """`talk` logs two lines; `gate` logs, then waits until `marker` exists."""
    talk = "echo hello >&2; echo world >&2; echo '{\"said\": 2}'"
    gate = (
        f'echo waiting >&2; while [ ! -e "{marker}" ]; do sleep 0.02; done; '
        "echo opened >&2; echo '{\"opened\": true}'"
    )
    return json.dumps({
        "pipeline": name,
        "agents": {
            "talk": {"kind": "command", "run": ["sh", "-c", talk], "writes": ["said"]},
            "gate": {"kind": "command", "run": ["sh", "-c", gate], "reads": ["said"], "writes": ["opened"]},
            "a": {"kind": "sleep", "ms": 5, "reads": ["opened"], "writes": ["a_out"]},
            "b": {"kind": "sleep", "ms": 5, "reads": ["opened"], "writes": ["b_out"]},
            "end": {"kind": "sleep", "ms": 5, "reads": ["a_out", "b_out"], "writes": ["done"]},
        },
    })


def check_stream(events: List[Event], run_id: str, name: str) -> None:
    """What any complete stream of a `chatty` run must look like."""
    assert [e.seq for e in events] == list(range(1, len(events) + 1)), "numbered 1, 2, 3... without gaps"
    assert events[0].type == "run_started" and events[0].run_id == run_id and events[0].pipeline == name
    assert events[-1].type == "run_finished" and events[-1].status == "completed"
    assert events[-1].makespan_ms > 0
    assert [e.at_ms for e in events] == sorted(e.at_ms for e in events)
    for agent in ["talk", "gate", "a", "b", "end"]:
        kinds = [e.type for e in events if e.agent == agent and e.type != "agent_log"]
        assert kinds == ["agent_started", "agent_completed"], f"{agent}: {kinds}"
        started = next(e for e in events if e.agent == agent and e.type == "agent_started")
        assert started.attempt == 1
        completed = next(e for e in events if e.agent == agent and e.type == "agent_completed")
        assert completed.duration_ms >= 0
    position = {(e.agent, e.type): i for i, e in enumerate(events)}
    # Each agent starts only after what it reads was written.
    assert position[("talk", "agent_completed")] < position[("gate", "agent_started")]
    assert position[("gate", "agent_completed")] < position[("a", "agent_started")]
    assert position[("a", "agent_completed")] < position[("end", "agent_started")]
    assert position[("b", "agent_completed")] < position[("end", "agent_started")]
    logs = [(e.agent, e.line) for e in events if e.type == "agent_log"]
    talk = "\n".join(line for agent, line in logs if agent == "talk")
    gate = "\n".join(line for agent, line in logs if agent == "gate")
    assert talk == "hello\nworld", logs
    assert gate == "waiting\nopened", logs


def test_stream_events_in_order_with_their_fields(client: Client, name: str, tmp_path: Path) -> None:
    marker = tmp_path / "open"
    marker.touch()
    client.register_pipeline(chatty(name, marker))
    run = client.start_run(name, events="full")
    events = list(client.events(run.run_id))
    check_stream(events, run.run_id, name)
    assert client.wait(run.run_id, timeout=30).status == "completed"

    # A finished run replays the same stream; `after` starts past a sequence number.
    assert [(e.seq, e.type) for e in client.events(run.run_id)] == [(e.seq, e.type) for e in events]
    tail = list(client.events(run.run_id, after=3))
    assert [e.seq for e in tail] == [e.seq for e in events[3:]]
    assert [e.raw for e in tail] == [e.raw for e in events[3:]]


def test_a_dropped_stream_resumes_without_losing_or_repeating_events(
    client: Client, proxy, name: str, tmp_path: Path
) -> None:
    marker = tmp_path / "open"
    client.register_pipeline(chatty(name, marker))
    run = client.start_run(name, events="full")

    through_proxy = Client(f"http://127.0.0.1:{proxy.port}", token=client.token, timeout=10)
    stream = through_proxy.events(run.run_id)
    seen: List[Event] = []
    for event in stream:
        seen.append(event)
        if event.agent == "gate" and event.type == "agent_log":
            break  # `gate` is waiting for the marker: the run is mid-way
    assert proxy.accepted == 1
    cut_after = seen[-1].seq

    # The connection drops while the run goes on: the rest of its events
    # happen while no one is connected.
    proxy.cut()
    marker.touch()
    client.wait(run.run_id, timeout=30)

    seen.extend(stream)  # the same iterator: it reconnects by itself
    assert proxy.accepted == 2, "it reconnected once"
    reconnect = proxy.requests[1].decode("latin-1").lower()
    assert f"last-event-id: {cut_after}\r\n" in reconnect, reconnect
    assert seen[-1].type == "run_finished"
    assert any(e.seq > cut_after for e in seen)
    check_stream(seen, run.run_id, name)
    # Exactly what a client that never dropped would have seen.
    assert [e.raw for e in seen] == [e.raw for e in client.events(run.run_id)]


def test_events_of_an_unknown_run_are_not_found(client: Client) -> None:
    with pytest.raises(NotFound):
        next(iter(client.events("no-such-run")))
