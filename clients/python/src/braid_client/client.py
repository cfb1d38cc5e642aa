"""The HTTP client: :class:`Client` talks to ``braid serve``'s ``/v1`` API.

It uses the standard library only (``http.client``): one connection per
call, so a ``Client`` can be shared between threads. Every answer body is
read up to ``max_response_bytes``; every error status raises the typed
error of :mod:`braid_client.errors`.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
import urllib.parse
from typing import Any, Dict, Iterator, List, Optional, Tuple

from .errors import (
    BraidConnectionError,
    BraidError,
    BraidTimeout,
    NotFound,
    ProtocolError,
    error_for,
)
from .models import Event, Pipeline, Run, RunReport, RunSummary

#: Larger answers are refused (:class:`ProtocolError`): a run's report holds
#: its whole state, so the default is generous.
DEFAULT_MAX_RESPONSE_BYTES = 256 * 1024 * 1024

#: The longest line of an event stream (one event's ``data``); the server
#: cuts log lines to 16 KiB, but an ``agent_waiting`` event carries the
#: values its agent reads.
MAX_EVENT_LINE_BYTES = 64 * 1024 * 1024

#: How long a stream may stay silent before it counts as dropped. The
#: server sends a keep-alive comment every 15 s.
STREAM_IDLE_TIMEOUT = 45.0

#: Reconnections in a row, without an event in between, before a stream
#: gives up.
MAX_RECONNECTS = 8

# `after` for a stream that should deliver nothing but its end: every
# event has a lower sequence number, so the server sends none and closes
# the stream when the run ends.
_END_ONLY = 2**63 - 1


class Client:
    """A client of one braid server.

    ``base_url`` is where it listens (``http://127.0.0.1:7700``); ``token``
    its bearer token (default: the ``BRAID_TOKEN`` environment variable, as
    ``braid serve`` reads it); ``timeout`` how long, in seconds, one call
    may wait for the server (calls made with ``wait=True`` wait for their
    run however long it takes, unless given ``wait_timeout``).
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:7700",
        token: Optional[str] = None,
        timeout: float = 30.0,
        *,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"base_url must be an http:// or https:// URL with a host, not {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self._https = parsed.scheme == "https"
        self._host = parsed.hostname
        self._port = parsed.port
        self._prefix = parsed.path.rstrip("/")
        self.token = token if token is not None else os.environ.get("BRAID_TOKEN")
        self.timeout = timeout
        self.max_response_bytes = max_response_bytes

    def __repr__(self) -> str:
        return f"Client({self.base_url!r})"

    # ---- transport -------------------------------------------------------

    def _connection(self, timeout: Optional[float]) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(self._host, self._port, timeout=timeout)
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)

    def _url(self, path: str, query: Optional[Dict[str, Any]] = None) -> str:
        url = self._prefix + path
        if query:
            pairs = {k: _query_value(v) for k, v in query.items() if v is not None and v is not False}
            if pairs:
                url += "?" + urllib.parse.urlencode(pairs)
        return url

    def _headers(self, extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "braid-client-python/0.1"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        headers.update(extra or {})
        return headers

    def _open(
        self,
        method: str,
        path: str,
        *,
        query: Optional[Dict[str, Any]] = None,
        body: Optional[bytes] = None,
        content_type: Optional[str] = None,
        headers: Optional[Dict[str, str]] = None,
        timeout: Optional[float],
    ) -> Tuple[http.client.HTTPConnection, http.client.HTTPResponse, str]:
        """Sends a request; returns the connection and its response once the
        status is in (an error status is raised as its typed error)."""
        url = self._url(path, query)
        extra = dict(headers or {})
        # Every POST says what it carries, even without a body: the server
        # refuses others (415), so no other site's page can send them.
        if method != "GET":
            extra["Content-Type"] = content_type or "application/json"
        conn = self._connection(timeout)
        try:
            conn.request(method, url, body=body, headers=self._headers(extra))
            response = conn.getresponse()
        except socket.timeout as e:
            conn.close()
            raise BraidTimeout(f"no answer within {timeout} s", method=method, url=self.base_url + url) from e
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise BraidConnectionError(
                f"cannot reach the server: {e}", method=method, url=self.base_url + url
            ) from e
        if response.status >= 400:
            try:
                text = _read_capped(response, 1024 * 1024)
            except (OSError, http.client.HTTPException):
                text = b""
            conn.close()
            raise error_for(response.status, text, method=method, url=self.base_url + url)
        return conn, response, url

    def _call(
        self,
        method: str,
        path: str,
        *,
        query: Optional[Dict[str, Any]] = None,
        json_body: Any = None,
        raw_body: Optional[bytes] = None,
        content_type: Optional[str] = None,
        timeout: Any = "default",
    ) -> Any:
        """One request and its JSON answer (``None`` for an empty one)."""
        if timeout == "default":
            timeout = self.timeout
        body = raw_body
        if json_body is not None:
            body = json.dumps(json_body).encode("utf-8")
        conn, response, url = self._open(
            method, path, query=query, body=body, content_type=content_type, timeout=timeout
        )
        try:
            data = _read_capped(response, self.max_response_bytes)
        except socket.timeout as e:
            raise BraidTimeout(f"the answer stalled for {timeout} s", method=method, url=self.base_url + url) from e
        except (OSError, http.client.HTTPException) as e:
            raise BraidConnectionError(
                f"the connection broke mid-answer: {e}", method=method, url=self.base_url + url
            ) from e
        except ValueError as e:
            raise ProtocolError(str(e), method=method, url=self.base_url + url) from e
        finally:
            conn.close()
        if not data.strip():
            return None
        try:
            return json.loads(data)
        except ValueError as e:
            raise ProtocolError(
                f"expected JSON, got {data[:200]!r}", status=response.status, method=method, url=self.base_url + url
            ) from e

    def _run(self, answer: Any, waited: bool) -> Run:
        if waited:
            report = _parse(RunReport, answer)
            return Run(run_id=report.run_id, status=report.status, report=report,
                       parent_id=report.parent_id, client=self)
        if not isinstance(answer, dict) or not isinstance(answer.get("run_id"), str):
            raise ProtocolError(f"expected an object with a `run_id`, got {answer!r:.300}")
        answer = dict(answer)
        run_id = answer.pop("run_id")
        return Run(
            run_id=run_id,
            status=answer.pop("status", None),
            parent_id=answer.pop("parent_id", None),
            rerun=answer.pop("rerun", None),
            extra=answer,
            client=self,
        )

    # ---- runs ------------------------------------------------------------

    def start_run(
        self,
        pipeline: str,
        input: Optional[Dict[str, Any]] = None,
        events: str = "off",
        checkpoint: Optional[str] = None,
        wait: bool = False,
        *,
        no_cache: bool = False,
        wait_timeout: Optional[float] = None,
    ) -> Run:
        """Starts a run of ``pipeline`` (``POST /v1/runs``).

        ``events``: ``off`` (none built), ``summary`` (lifecycle) or ``full``
        (with agents' log lines). ``checkpoint``: ``none``, ``end`` or
        ``agent`` (the pipeline's own policy by default). With ``wait``, the
        server answers once the run has finished (or waits for an answer),
        and the returned :class:`Run` has its ``report``; ``wait_timeout``
        bounds that wait (default: none).
        """
        body: Dict[str, Any] = {"pipeline": pipeline, "input": input or {}, "events": events}
        if checkpoint is not None:
            body["checkpoint"] = checkpoint
        if no_cache:
            body["no_cache"] = True
        answer = self._call(
            "POST", "/v1/runs", query={"wait": wait}, json_body=body,
            timeout=wait_timeout if wait else "default",
        )
        return self._run(answer, wait)

    def get_run(self, run_id: str) -> RunReport:
        """One run's report (``GET /v1/runs/{id}``): in flight, or from the store."""
        return _parse(RunReport, self._call("GET", f"/v1/runs/{_seg(run_id)}"))

    def list_runs(
        self,
        status: Optional[str] = None,
        pipeline: Optional[str] = None,
        limit: Optional[int] = None,
        prefix: Optional[str] = None,
        since_ms: Optional[int] = None,
        until_ms: Optional[int] = None,
    ) -> List[RunSummary]:
        """Runs newest first (``GET /v1/runs``), filtered by the server:
        ``status``, ``pipeline``, a run id ``prefix``, created between
        ``since_ms`` and ``until_ms`` (ms since the Unix epoch), at most
        ``limit`` (server default 50, at most 500)."""
        query = {
            "status": status,
            "pipeline": pipeline,
            "limit": limit,
            "prefix": prefix,
            "since": since_ms,
            "until": until_ms,
        }
        listed = self._call("GET", "/v1/runs", query=query) or []
        return [_parse(RunSummary, r) for r in listed]

    def wait(self, run_id: str, timeout: Optional[float] = None, poll: float = 0.5) -> RunReport:
        """Waits until the run is no longer running and returns its report:
        completed, failed, cancelled, interrupted, or ``waiting`` for an
        answer. Raises :class:`BraidTimeout` after ``timeout`` seconds.

        The API has no wait for a run already started, so this follows the
        run's event stream asking for nothing but its end (the server closes
        it when the run ends, sending no event), which returns at once when
        the run ends; a run the server does not have in memory (one another
        process runs on the same store) is polled every ``poll`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.01
        while True:
            report = self.get_run(run_id)
            if report.status != "running":
                return report
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise BraidTimeout(f"run {run_id} was still running after {timeout} s")
            started = time.monotonic()
            try:
                self._wait_for_end(run_id, remaining)
            except NotFound:
                # Not in this server's memory: ask again later.
                time.sleep(min(poll, remaining) if remaining is not None else poll)
                continue
            except BraidTimeout:
                continue  # the deadline is checked above
            except BraidConnectionError:
                time.sleep(min(poll, remaining) if remaining is not None else poll)
                continue
            if time.monotonic() - started < 0.05:
                # The stream had ended already and the report is on its
                # way (it is set once the run is saved): back off a little.
                time.sleep(pause)
                pause = min(pause * 2, poll)

    def _wait_for_end(self, run_id: str, remaining: Optional[float]) -> None:
        timeout = STREAM_IDLE_TIMEOUT if remaining is None else max(min(remaining, STREAM_IDLE_TIMEOUT), 0.001)
        conn, response, url = self._open(
            "GET", f"/v1/runs/{_seg(run_id)}/events", query={"after": _END_ONLY},
            headers={"Accept": "text/event-stream"}, timeout=timeout,
        )
        try:
            while True:
                line = response.readline(64 * 1024)
                if not line:
                    return
        except socket.timeout as e:
            raise BraidTimeout("no end yet") from e
        except (OSError, http.client.HTTPException) as e:
            raise BraidConnectionError(f"the stream broke: {e}") from e
        finally:
            conn.close()

    def events(
        self,
        run_id: str,
        after: Optional[int] = None,
        *,
        reconnect: bool = True,
        idle_timeout: float = STREAM_IDLE_TIMEOUT,
    ) -> Iterator[Event]:
        """The run's events as they happen (``GET /v1/runs/{id}/events``,
        Server-Sent Events), from the one after sequence number ``after``
        (from the first by default), ending with ``run_finished``.

        A connection that drops before the final event (or is silent for
        ``idle_timeout`` seconds, though the server sends a keep-alive every
        15 s) is opened again with ``Last-Event-ID``: the server sends every
        event missed meanwhile, once, in order. After ``MAX_RECONNECTS``
        failures in a row it raises :class:`BraidConnectionError`. The
        server's ``lagged`` notices are not events and are not yielded (it
        replays what a slow reader missed).

        Closing the iterator (``close()``, or leaving a ``for`` loop and
        letting it go) closes the connection.
        """
        last = after or 0
        failures = 0
        while True:
            stream = self._stream_once(run_id, last, idle_timeout)
            try:
                for event in stream:
                    failures = 0
                    last = event.seq
                    yield event
                    if event.type == "run_finished":
                        return
                # The server ended the stream without the final event: only
                # a dropped connection (or a proxy) does that.
                problem: BraidError = BraidConnectionError(
                    f"the event stream of run {run_id} ended before its final event"
                )
            except (BraidConnectionError, BraidTimeout) as e:
                problem = e
            finally:
                stream.close()  # closes its connection now, not when collected
            if not reconnect:
                raise problem
            failures += 1
            if failures > MAX_RECONNECTS:
                raise BraidConnectionError(
                    f"the event stream of run {run_id} dropped {failures} times in a row; last: {problem}"
                ) from problem
            time.sleep(min(0.05 * 2 ** (failures - 1), 2.0))

    def _stream_once(self, run_id: str, last: int, idle_timeout: float) -> Iterator[Event]:
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if last:
            headers["Last-Event-ID"] = str(last)
        conn, response, url = self._open(
            "GET", f"/v1/runs/{_seg(run_id)}/events", headers=headers, timeout=idle_timeout,
        )
        try:
            for kind, data in _sse_messages(response):
                if kind == "lagged":
                    continue
                try:
                    payload = json.loads(data)
                except ValueError as e:
                    raise ProtocolError(f"an event's data is not JSON: {data[:200]!r}") from e
                event = _parse(Event, payload)
                if event.seq <= last:
                    continue  # already delivered (never expected, but never repeated either)
                yield event
        except socket.timeout as e:
            raise BraidTimeout(f"the event stream was silent for {idle_timeout} s") from e
        except (OSError, http.client.HTTPException) as e:
            raise BraidConnectionError(f"the event stream broke: {e}") from e
        finally:
            conn.close()

    def cancel(self, run_id: str) -> Run:
        """Cancels a run in flight (``POST /v1/runs/{id}/cancel``); returns at
        once with status ``cancelling`` (``wait`` for its end). 409
        (:class:`Conflict`) if it has already finished."""
        return self._run(self._call("POST", f"/v1/runs/{_seg(run_id)}/cancel"), False)

    def resume(self, run_id: str, force: bool = False, wait: bool = False,
               *, wait_timeout: Optional[float] = None) -> Run:
        """Resumes a stored run that did not complete (``POST
        /v1/runs/{id}/resume``): completed agents keep their results.
        ``force`` resumes a run whose pipeline changed since, or that is
        recorded as running elsewhere."""
        answer = self._call(
            "POST", f"/v1/runs/{_seg(run_id)}/resume", query={"force": force, "wait": wait},
            timeout=wait_timeout if wait else "default",
        )
        return self._run(answer, wait)

    def answer(self, run_id: str, agent: str, value: Any, wait: bool = False,
               *, force: bool = False, wait_timeout: Optional[float] = None) -> Run:
        """Answers a waiting ``input`` agent (``POST
        /v1/runs/{id}/agents/{agent}/answer``). A value that does not fit
        the agent's schema raises :class:`ValidationError` (with the
        schema's messages in ``problems``); an agent that is not waiting
        (a second answer) raises :class:`Conflict`."""
        answer = self._call(
            "POST", f"/v1/runs/{_seg(run_id)}/agents/{_seg(agent)}/answer",
            query={"wait": wait, "force": force}, json_body={"value": value},
            timeout=wait_timeout if wait else "default",
        )
        return self._run(answer, wait)

    def fork(
        self,
        run_id: str,
        from_: Optional[str] = None,
        set: Optional[Dict[str, Any]] = None,
        events: Optional[str] = None,
        wait: bool = False,
        *,
        wait_timeout: Optional[float] = None,
    ) -> Run:
        """Starts a fork of a stored run (``POST /v1/runs/{id}/fork``): every
        agent not downstream of ``from_`` (an agent, ``agent[3]``,
        ``group[2].member``) or of a field in ``set`` keeps its recorded
        result; the rest run. The returned :class:`Run` has ``parent_id``
        and ``rerun`` (or, with ``wait``, the fork's report)."""
        body: Dict[str, Any] = {}
        if from_ is not None:
            body["from"] = from_
        if set:
            body["set"] = set
        if events is not None:
            body["events"] = events
        answer = self._call(
            "POST", f"/v1/runs/{_seg(run_id)}/fork", query={"wait": wait}, json_body=body,
            timeout=wait_timeout if wait else "default",
        )
        return self._run(answer, wait)

    # ---- pipelines -------------------------------------------------------

    def pipelines(self) -> List[Pipeline]:
        """Every pipeline the server knows (``GET /v1/pipelines``)."""
        return [_parse(Pipeline, p) for p in self._call("GET", "/v1/pipelines") or []]

    def get_pipeline(self, name: str) -> Pipeline:
        """One pipeline, with its source and ``explain`` JSON."""
        return _parse(Pipeline, self._call("GET", f"/v1/pipelines/{_seg(name)}"))

    def register_pipeline(self, yaml_text: str) -> Pipeline:
        """Registers (or replaces) a pipeline from its YAML or JSON text
        (``POST /v1/pipelines``). An invalid one raises
        :class:`ValidationError` with ``braid validate``'s messages in
        ``problems``; ``command`` agents need a server started with
        ``--allow-command-agents`` (else :class:`Forbidden`)."""
        answer = self._call(
            "POST", "/v1/pipelines", raw_body=yaml_text.encode("utf-8"), content_type="application/yaml"
        )
        return _parse(Pipeline, answer)

    def delete_pipeline(self, name: str) -> None:
        """Deletes a pipeline a client registered (``DELETE /v1/pipelines/{name}``)."""
        self._call("DELETE", f"/v1/pipelines/{_seg(name)}")

    # ---- health ----------------------------------------------------------

    def healthy(self) -> bool:
        """Whether the server answers ``/healthz``."""
        try:
            conn, response, _ = self._open("GET", "/healthz", timeout=self.timeout)
        except BraidError:
            return False
        conn.close()
        return response.status == 200


def _parse(cls: Any, data: Any) -> Any:
    """``cls.from_json(data)``; an answer without the fields it must have is
    a :class:`ProtocolError`, not a ``TypeError`` from deep inside."""
    try:
        return cls.from_json(data)
    except (TypeError, ValueError, AttributeError) as e:
        raise ProtocolError(f"the server's answer is not a {cls.__name__}: {e}; got {data!r:.300}") from e


def _seg(value: str) -> str:
    """A path segment, escaped."""
    return urllib.parse.quote(str(value), safe="")


def _query_value(value: Any) -> str:
    if value is True:
        return "true"
    return str(value)


def _read_capped(response: http.client.HTTPResponse, limit: int) -> bytes:
    # In pieces: `read(n)` allocates n bytes up front on some Pythons.
    chunks: List[bytes] = []
    total = 0
    while True:
        chunk = response.read(min(1024 * 1024, limit + 1 - total))
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > limit:
            raise ValueError(f"the answer is longer than {limit} bytes (max_response_bytes)")
        chunks.append(chunk)


def _sse_messages(response: http.client.HTTPResponse) -> Iterator[Tuple[str, str]]:
    """``(event type, data)`` for each message of a Server-Sent Events
    stream, until it ends. Comments (keep-alives) and ``id``/``retry``
    lines are read and dropped: the data carries the event's ``seq``."""
    kind = "message"
    data: List[str] = []
    size = 0
    while True:
        line = response.readline(MAX_EVENT_LINE_BYTES + 1)
        if not line:
            return
        if len(line) > MAX_EVENT_LINE_BYTES:
            raise ProtocolError(f"an event stream line is longer than {MAX_EVENT_LINE_BYTES} bytes")
        text = line.decode("utf-8", errors="replace").rstrip("\r\n")
        if not text:
            if data:
                yield kind, "\n".join(data)
            kind, data, size = "message", [], 0
            continue
        if text.startswith(":"):
            continue
        name, _, value = text.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "event":
            kind = value
        elif name == "data":
            size += len(value)
            if size > MAX_EVENT_LINE_BYTES:
                raise ProtocolError(f"an event is longer than {MAX_EVENT_LINE_BYTES} bytes")
            data.append(value)
