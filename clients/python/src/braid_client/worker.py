"""Command agents in Python: one decorator turns a function into a worker.

A ``command`` agent gets ``{"agent", "run_id", "attempt", "state": {READS...}}``
and answers with one JSON object of its writes. braid runs it one of two
ways, and a function decorated with :func:`worker` serves both:

- **plain** (no ``pool:``): one process per call. It reads the request from
  stdin, prints the writes on stdout and exits; a failure is a non-zero
  exit, with the traceback on stderr (braid quotes its last lines).
- **pooled** (``pool: N``): up to N warm processes, each serving many calls
  over JSON lines: one request per line on stdin, one answer per line on
  stdout, in order. A failure answers ``{"$error": "why"}``, which fails
  that call, and the process goes on serving the next.

``serve()`` tells them apart by the ``BRAID_POOLED=1`` variable braid sets
for pooled processes (or by its ``pooled`` argument).

While the function runs, ``print()`` goes to stderr, so stray output never
breaks the protocol on stdout (each stderr line of a plain command is a log
line of the agent).

::

    from braid_client.worker import worker

    @worker
    def classify(state: dict) -> dict:
        return {"label": "long" if len(state["text"]) > 100 else "short"}

    if __name__ == "__main__":
        classify.serve()
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Dict, IO, Optional, Union, overload

__all__ = ["Call", "Worker", "WorkerError", "worker"]


@dataclass(frozen=True)
class Call:
    """Which call a worker is serving (given to functions decorated with
    ``@worker(with_call=True)``)."""

    agent: str
    """The agent's name (``summarize[3]`` for an instance of a ``foreach`` agent)."""
    run_id: str
    attempt: int
    """1 for the first attempt, 2 for the first retry..."""


class WorkerError(Exception):
    """Raise it to fail a call with just its message (no traceback is
    printed). Any other exception fails the call too, named by its type."""


class Worker:
    """A function serving a ``command`` agent; see the module docs. Calling
    the worker calls the function."""

    def __init__(self, function: Callable[..., Dict[str, Any]], with_call: bool = False) -> None:
        self.function = function
        self.with_call = with_call
        self.__name__ = getattr(function, "__name__", "worker")
        self.__doc__ = getattr(function, "__doc__", None)
        self.__wrapped__ = function

    def __call__(self, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        return self.function(*args, **kwargs)

    def handle(self, request: Any) -> Dict[str, Any]:
        """One call: the writes for ``request`` (the object braid sends).
        Raises what the function raises, or :class:`WorkerError` for a
        request or an answer outside the protocol."""
        if not isinstance(request, dict) or not isinstance(request.get("state", {}), dict):
            raise WorkerError(f"expected a request object with a `state` object, got {request!r:.200}")
        state = request.get("state") or {}
        if self.with_call:
            call = Call(
                agent=str(request.get("agent", "")),
                run_id=str(request.get("run_id", "")),
                attempt=int(request.get("attempt") or 1),
            )
            writes = self.function(state, call)
        else:
            writes = self.function(state)
        if not isinstance(writes, dict):
            raise WorkerError(
                f"{self.__name__} must return a dict of writes, not {type(writes).__name__}"
            )
        return writes

    def serve(
        self,
        pooled: Optional[bool] = None,
        stdin: Optional[IO[str]] = None,
        stdout: Optional[IO[str]] = None,
    ) -> int:
        """Serves calls until stdin ends (pooled) or serves the one call
        (plain), then exits the process with the right status (0, or 1 for
        a failed plain call). ``pooled`` defaults to whether braid set
        ``BRAID_POOLED=1``. Give ``stdin``/``stdout`` to serve other streams;
        then the status is returned instead of exiting."""
        if pooled is None:
            pooled = os.environ.get("BRAID_POOLED") == "1"
        own_streams = stdin is None and stdout is None
        # braid speaks UTF-8, whatever the locale says (answers are
        # ASCII: json.dumps escapes the rest).
        stdin = stdin if stdin is not None else io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8")
        stdout = stdout if stdout is not None else sys.stdout
        status = self._serve_lines(stdin, stdout) if pooled else self._serve_one(stdin, stdout)
        if own_streams:
            sys.exit(status)
        return status

    def _answer(self, request: Any) -> Dict[str, Any]:
        # Stray prints go to stderr: stdout carries only the protocol.
        with contextlib.redirect_stdout(sys.stderr):
            return self.handle(request)

    def _serve_one(self, stdin: IO[str], stdout: IO[str]) -> int:
        text = stdin.read()
        try:
            request = json.loads(text)
            writes = self._answer(request)
            line = json.dumps(writes)
        except WorkerError as e:
            print(f"{self.__name__}: {e}", file=sys.stderr)
            return 1
        except Exception:  # noqa: BLE001 - any failure fails the call
            traceback.print_exc(file=sys.stderr)
            return 1
        stdout.write(line + "\n")
        stdout.flush()
        return 0

    def _serve_lines(self, stdin: IO[str], stdout: IO[str]) -> int:
        while True:
            raw = stdin.readline()
            if not raw:
                return 0  # braid closed the pipe: the pool is done with us
            if not raw.strip():
                continue
            try:
                request = json.loads(raw)
                line = json.dumps(self._answer(request))
            except WorkerError as e:
                line = json.dumps({"$error": str(e)})
            except Exception as e:  # noqa: BLE001 - any failure fails the call
                traceback.print_exc(file=sys.stderr)
                line = json.dumps({"$error": f"{type(e).__name__}: {e}"})
            stdout.write(line + "\n")
            stdout.flush()


@overload
def worker(function: Callable[..., Dict[str, Any]]) -> Worker: ...


@overload
def worker(*, with_call: bool = False) -> Callable[[Callable[..., Dict[str, Any]]], Worker]: ...


def worker(
    function: Optional[Callable[..., Dict[str, Any]]] = None, *, with_call: bool = False
) -> Union[Worker, Callable[[Callable[..., Dict[str, Any]]], Worker]]:
    """Turns ``function(state) -> writes`` into a :class:`Worker` (see the
    module docs). ``@worker(with_call=True)`` passes a :class:`Call` as a
    second argument: the agent's name, the run's id and the attempt."""
    if function is not None:
        return Worker(function, with_call=with_call)
    return lambda f: Worker(f, with_call=with_call)
