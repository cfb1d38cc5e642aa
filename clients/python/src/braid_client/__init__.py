"""A client for braid's HTTP API (``braid serve``), and a helper for writing
``command`` agents in Python (:mod:`braid_client.worker`).

::

    from braid_client import Client

    client = Client("http://127.0.0.1:7700", token="change-me")
    run = client.start_run("seed-optimization", {"request": "cut costs"}, events="summary")
    for event in client.events(run.run_id):
        print(event.seq, event.type, event.agent)
    report = client.wait(run.run_id)
    print(report.status, report.state)
"""

from .client import Client
from .errors import (
    ApiError,
    BadRequest,
    BraidConnectionError,
    BraidError,
    BraidTimeout,
    Conflict,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    ProtocolError,
    ServerError,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
    UnsupportedMediaType,
    ValidationError,
)
from .models import FINAL_STATUSES, AgentReport, Event, Pipeline, Question, Run, RunReport, RunSummary

__version__ = "0.1.0"

__all__ = [
    "FINAL_STATUSES",
    "AgentReport",
    "ApiError",
    "BadRequest",
    "BraidConnectionError",
    "BraidError",
    "BraidTimeout",
    "Client",
    "Conflict",
    "Event",
    "Forbidden",
    "NotFound",
    "PayloadTooLarge",
    "Pipeline",
    "ProtocolError",
    "Question",
    "Run",
    "RunReport",
    "RunSummary",
    "ServerError",
    "ServiceUnavailable",
    "TooManyRequests",
    "Unauthorized",
    "UnsupportedMediaType",
    "ValidationError",
]
