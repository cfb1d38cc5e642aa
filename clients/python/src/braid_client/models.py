"""Typed results: what the server answers, as dataclasses.

Each class names the fields the server sends today; whatever else an answer
carries (a field a newer server added) is kept in ``extra``, so a newer
server never breaks an older client. ``raw`` keeps the whole answer as it
came. Build them with ``from_json``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Type, TypeVar

T = TypeVar("T")

#: Run statuses after which nothing more happens without a client acting
#: (``waiting`` waits for an answer; ``failed``, ``cancelled`` and
#: ``interrupted`` runs can be resumed).
FINAL_STATUSES = frozenset({"completed", "failed", "cancelled", "interrupted", "waiting"})


def _split(cls: Type[Any], data: Dict[str, Any], skip: tuple = ()) -> Dict[str, Any]:
    """The keyword arguments for ``cls``: its known fields from ``data``, the
    rest under ``extra``."""
    names = {f.name for f in dataclasses.fields(cls)} - {"extra", "raw"} - set(skip)
    known = {k: v for k, v in data.items() if k in names}
    extra = {k: v for k, v in data.items() if k not in names and k not in skip}
    return {**known, "extra": extra}


def _object(data: Any, what: str) -> Dict[str, Any]:
    if not isinstance(data, dict):
        raise TypeError(f"expected a JSON object for {what}, got {type(data).__name__}: {data!r:.200}")
    return data


@dataclass
class AgentReport:
    """One agent's fate in a run (``report.agents[NAME]``)."""

    status: str
    """``pending``, ``running``, ``completed``, ``failed``, ``skipped``, ``waiting``..."""
    start_ms: Optional[float] = None
    duration_ms: Optional[float] = None
    queue_ms: Optional[float] = None
    attempts: int = 0
    error: Optional[str] = None
    reason: Optional[str] = None
    """Why it was skipped."""
    resumed: bool = False
    """Its result was kept from before a resume (it did not run again)."""
    tokens: Optional[Dict[str, Any]] = None
    items: Optional[Dict[str, Any]] = None
    """For a ``foreach`` agent: counts of its instances."""
    instances: Optional[Dict[str, "AgentReport"]] = None
    cached: bool = False
    reused_from: Optional[str] = None
    """The run a fork kept this agent's result from."""
    deadline_ms: Optional[int] = None
    """For a waiting ``input`` agent: when its wait times out (ms since the epoch)."""
    failures: List[Dict[str, Any]] = field(default_factory=list)
    """Each failed attempt: ``attempt``, ``error``, ``duration_ms``."""
    logs: List[str] = field(default_factory=list)
    """Its last log lines (runs checkpointed ``end`` or ``agent``)."""
    logs_dropped: int = 0
    """Earlier lines that did not fit the bound."""
    extra: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any) -> "AgentReport":
        data = _object(data, "an agent's report")
        kwargs = _split(cls, data)
        if isinstance(kwargs.get("instances"), dict):
            kwargs["instances"] = {k: AgentReport.from_json(v) for k, v in kwargs["instances"].items()}
        return cls(**kwargs)


@dataclass
class Question:
    """What a waiting ``input`` agent asks (``report.questions``)."""

    agent: str
    prompt: Optional[str] = None
    schema: Any = None
    default: Any = None
    reads: Dict[str, Any] = field(default_factory=dict)
    deadline_ms: Optional[int] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any) -> "Question":
        return cls(**_split(cls, _object(data, "a question")))


@dataclass
class RunReport:
    """A run as ``GET /v1/runs/{id}`` (or a ``?wait=true`` call) returns it.

    A run still in flight has ``status == "running"`` and little else; one
    read back from the store has ``input`` and no ``state``.
    """

    run_id: str
    pipeline: str
    status: str
    error: Optional[str] = None
    makespan_ms: Optional[float] = None
    state: Dict[str, Any] = field(default_factory=dict)
    """Every field with a value: the inputs and what completed agents wrote."""
    agents: Dict[str, AgentReport] = field(default_factory=dict)
    tokens: Optional[Dict[str, Any]] = None
    events: Optional[str] = None
    """The run's events mode: ``off``, ``summary`` or ``full``."""
    parent_id: Optional[str] = None
    """For a fork: the run it was forked from."""
    saved: Optional[bool] = None
    """``False`` when the store did not take the run (``save_error`` says why)."""
    save_error: Optional[str] = None
    questions: List[Question] = field(default_factory=list)
    """What its waiting ``input`` agents ask."""
    # Fields of a run read back from the store.
    checkpoint: Optional[str] = None
    created_at_ms: Optional[int] = None
    pipeline_hash: Optional[str] = None
    pipeline_path: Optional[str] = None
    owner: Optional[str] = None
    input: Optional[Dict[str, Any]] = None
    forked_from: Optional[str] = None
    forks: List[str] = field(default_factory=list)
    extra: Dict[str, Any] = field(default_factory=dict)
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def finished(self) -> bool:
        """Whether nothing more happens without a client acting (see :data:`FINAL_STATUSES`)."""
        return self.status in FINAL_STATUSES

    @classmethod
    def from_json(cls, data: Any) -> "RunReport":
        data = _object(data, "a run")
        kwargs = _split(cls, data)
        kwargs["agents"] = {k: AgentReport.from_json(v) for k, v in (kwargs.get("agents") or {}).items()}
        kwargs["questions"] = [Question.from_json(q) for q in (kwargs.get("questions") or [])]
        kwargs["state"] = kwargs.get("state") or {}
        kwargs["forks"] = kwargs.get("forks") or []
        return cls(**kwargs, raw=data)


@dataclass
class RunSummary:
    """One line of ``GET /v1/runs``."""

    run_id: str
    pipeline: str
    status: str
    makespan_ms: Optional[float] = None
    events: Optional[str] = None
    checkpoint: Optional[str] = None
    created_at_ms: Optional[int] = None
    error: Optional[str] = None
    started_by: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any) -> "RunSummary":
        return cls(**_split(cls, _object(data, "a run summary")))


@dataclass
class Event:
    """One event of a run's stream. ``type`` says which fields are set:

    - ``run_started``: ``run_id``, ``pipeline``
    - ``agent_started``: ``agent``, ``attempt`` (``items`` for ``foreach``)
    - ``agent_retrying``: ``agent``, ``attempt``, ``error``, ``delay_ms``
    - ``agent_completed``: ``agent``, ``duration_ms`` (``cached``)
    - ``agent_failed``: ``agent``, ``error``
    - ``agent_skipped``: ``agent``, ``reason``
    - ``agent_waiting``: ``agent``, ``prompt``, ``schema``, ``reads``, ``deadline_ms``
    - ``agent_answered``: ``agent`` (``by_default``)
    - ``agent_log``: ``agent``, ``line`` (``partial``)
    - ``run_finished``: ``status``, ``makespan_ms``; always the last event
    """

    seq: int
    """1, 2, 3... per run, without gaps; the stream's ``id``."""
    type: str
    at_ms: Optional[float] = None
    """Milliseconds since the run started."""
    agent: Optional[str] = None
    run_id: Optional[str] = None
    pipeline: Optional[str] = None
    attempt: Optional[int] = None
    items: Optional[int] = None
    error: Optional[str] = None
    delay_ms: Optional[float] = None
    duration_ms: Optional[float] = None
    cached: bool = False
    reason: Optional[str] = None
    prompt: Optional[str] = None
    schema: Any = None
    reads: Optional[Dict[str, Any]] = None
    deadline_ms: Optional[int] = None
    by_default: bool = False
    line: Optional[str] = None
    partial: bool = False
    status: Optional[str] = None
    makespan_ms: Optional[float] = None
    coalesced: int = 0
    """For an event held back at the run's event cap: how many events it stands for."""
    extra: Dict[str, Any] = field(default_factory=dict)
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Any) -> "Event":
        data = _object(data, "an event")
        return cls(**_split(cls, data), raw=data)


@dataclass
class Run:
    """A handle on a run the server accepted (``start_run``, ``resume``,
    ``answer``, ``fork``, ``cancel``). With ``wait=True`` its ``report`` is
    set. The helpers call the client that made it."""

    run_id: str
    status: Optional[str] = None
    report: Optional[RunReport] = None
    parent_id: Optional[str] = None
    """For a fork: the run it was forked from."""
    rerun: Optional[List[str]] = None
    """For a fork: the agents that run again."""
    extra: Dict[str, Any] = field(default_factory=dict)
    client: Any = field(default=None, repr=False, compare=False)

    def wait(self, timeout: Optional[float] = None) -> RunReport:
        """``client.wait(self.run_id, timeout)``."""
        return self.client.wait(self.run_id, timeout=timeout)

    def get(self) -> RunReport:
        """``client.get_run(self.run_id)``."""
        return self.client.get_run(self.run_id)

    def events(self, after: Optional[int] = None):  # type: ignore[no-untyped-def]
        """``client.events(self.run_id, after)``."""
        return self.client.events(self.run_id, after=after)

    def cancel(self) -> "Run":
        """``client.cancel(self.run_id)``."""
        return self.client.cancel(self.run_id)


@dataclass
class Pipeline:
    """A pipeline the server knows (``pipelines()``, ``register_pipeline``)."""

    name: str
    origin: Optional[str] = None
    """``operator`` (loaded from ``--pipelines DIR``) or ``api`` (registered by a client)."""
    content_hash: Optional[str] = None
    description: Optional[str] = None
    agents: Optional[int] = None
    """How many agents (in the list)."""
    explain: Optional[Dict[str, Any]] = None
    """``braid explain``'s JSON (one pipeline, or a registration's answer)."""
    source: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any) -> "Pipeline":
        return cls(**_split(cls, _object(data, "a pipeline")))
