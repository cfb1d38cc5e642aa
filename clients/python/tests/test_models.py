"""Forward compatibility: fields a newer server adds land in `extra`
instead of breaking the client."""

from __future__ import annotations

import pytest

from braid_client import Event, RunReport, RunSummary


def test_unknown_fields_are_kept_in_extra() -> None:
    report = RunReport.from_json({
        "run_id": "r", "pipeline": "p", "status": "completed", "makespan_ms": 1.5,
        "state": {"x": 1}, "shiny_new_field": [1, 2],
        "agents": {"a": {"status": "completed", "attempts": 1, "gpu_seconds": 3}},
    })
    assert report.state == {"x": 1} and report.makespan_ms == 1.5
    assert report.extra == {"shiny_new_field": [1, 2]}
    assert report.agents["a"].attempts == 1 and report.agents["a"].extra == {"gpu_seconds": 3}
    assert report.raw["shiny_new_field"] == [1, 2]

    event = Event.from_json({"seq": 3, "type": "agent_teleported", "at_ms": 2.0, "agent": "a", "to": "mars"})
    assert (event.seq, event.type, event.agent, event.extra) == (3, "agent_teleported", "a", {"to": "mars"})

    summary = RunSummary.from_json({"run_id": "r", "pipeline": "p", "status": "running", "owner_team": "x"})
    assert summary.extra == {"owner_team": "x"}


def test_a_run_without_its_required_fields_is_refused() -> None:
    with pytest.raises(TypeError):
        RunReport.from_json({"pipeline": "p"})
    with pytest.raises(TypeError):
        RunReport.from_json(["not", "an", "object"])
