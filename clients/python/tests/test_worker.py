"""The worker decorator: its two protocols spoken over real pipes, then a
`pool: 2` command agent written with it, run by a real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from braid_client import Client

WORKER = '''
import os
from braid_client.worker import WorkerError, worker

@worker
def classify(state):
    text = state.get("item", state.get("text"))
    if text == "boom":
        raise ValueError("cannot classify boom")
    if text == "refuse":
        raise WorkerError("refused on purpose")
    if text == "nothing":
        return None
    print("classifying", text)          # stray output: must not reach stdout
    return {"label": "long" if len(text) > 5 else "short", "pid": os.getpid()}

if __name__ == "__main__":
    classify.serve()
'''


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "classify.py"
    path.write_text(WORKER)
    return path


def request(text: str, attempt: int = 1) -> str:
    return json.dumps({"agent": "classify", "run_id": "r1", "attempt": attempt, "state": {"text": text}})


def test_pooled_mode_answers_one_line_per_request_and_survives_failures(script: Path) -> None:
    lines = [request("hi"), request("boom"), request("a long text"), "not json", request("refuse"), request("nothing")]
    done = subprocess.run(
        [sys.executable, str(script)], input="\n".join(lines) + "\n", capture_output=True, text=True,
        env=dict(os.environ, BRAID_POOLED="1"), timeout=60,
    )
    assert done.returncode == 0, done.stderr
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(answers) == 6, done.stdout
    pid = answers[0]["pid"]
    assert answers[0] == {"label": "short", "pid": pid}
    assert answers[1] == {"$error": "ValueError: cannot classify boom"}
    assert answers[2] == {"label": "long", "pid": pid}, "the same process goes on after a failure"
    assert list(answers[3]) == ["$error"] and "JSONDecodeError" in answers[3]["$error"]
    assert answers[4] == {"$error": "refused on purpose"}
    assert answers[5] == {"$error": "classify must return a dict of writes, not NoneType"}
    assert "classifying hi" in done.stderr and "Traceback" in done.stderr


def test_requests_are_read_as_utf_8_whatever_the_locale(tmp_path: Path) -> None:
    path = tmp_path / "echo.py"
    path.write_text(
        "from braid_client.worker import worker\n"
        "@worker\n"
        "def echo(state):\n"
        "    return {'text': state['text'], 'chars': len(state['text'])}\n"
        "echo.serve()\n"
    )
    for pooled in ("1", "0"):
        done = subprocess.run(
            [sys.executable, str(path)],
            input=json.dumps({"state": {"text": "café ☕"}}, ensure_ascii=False).encode("utf-8") + b"\n",
            capture_output=True, env=dict(os.environ, BRAID_POOLED=pooled, PYTHONIOENCODING="latin-1"),
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"text": "café ☕", "chars": 6}, done.stdout


def test_plain_mode_answers_once_and_fails_with_an_exit_code(script: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "BRAID_POOLED"}
    done = subprocess.run([sys.executable, str(script)], input=request("hi"), capture_output=True,
                          text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"label": "short", "pid": json.loads(done.stdout)["pid"]}
    assert done.stdout.count("\n") == 1 and "classifying hi" in done.stderr

    failed = subprocess.run([sys.executable, str(script)], input=request("boom"), capture_output=True,
                            text=True, env=env, timeout=60)
    assert failed.returncode == 1 and failed.stdout == ""
    assert "ValueError: cannot classify boom" in failed.stderr


def pooled_pipeline(name: str, script: Path) -> str:
    return json.dumps({
        "pipeline": name,
        "inputs": {"texts": {"type": "array", "items": {"type": "string"}}},
        "agents": {
            "classify": {
                "kind": "command",
                "run": [sys.executable, str(script)],
                "pool": 2,
                "foreach": "texts",
                "reads": ["item"],
                "writes": ["label", "pid"],
            },
            "count": {"kind": "sleep", "ms": 1, "reads": ["label"], "writes": ["counted"], "value": True},
        },
    })


def test_a_pool_of_two_python_workers_runs_in_a_pipeline(client: Client, name: str, script: Path) -> None:
    client.register_pipeline(pooled_pipeline(name, script))
    texts = ["a", "bb", "a longer one", "ccc", "another long one", "d", "eeeeeeee", "f"]
    first = client.start_run(name, {"texts": texts}, wait=True).report
    assert first is not None and first.status == "completed", first
    assert first.state["label"] == ["long" if len(t) > 5 else "short" for t in texts]
    pids = set(first.state["pid"])
    assert 1 <= len(pids) <= 2, f"at most 2 processes served {len(texts)} calls: {pids}"
    assert first.agents["classify"].items["total"] == len(texts)

    # The processes stay warm for the next run.
    second = client.start_run(name, {"texts": ["x", "y", "z"]}, wait=True).report
    assert second is not None and second.status == "completed"
    assert set(second.state["pid"]) <= pids

    # A function that raises fails its call with its message, and the run.
    failed = client.start_run(name, {"texts": ["fine", "boom"]}, wait=True).report
    assert failed is not None and failed.status == "failed"
    errors = json.dumps(failed.raw["agents"]["classify"])
    assert "ValueError: cannot classify boom" in errors, errors


def test_the_same_worker_runs_as_a_plain_command_agent(client: Client, name: str, script: Path) -> None:
    client.register_pipeline(json.dumps({
        "pipeline": name,
        "inputs": {"text": {"type": "string"}},
        "agents": {
            "classify": {"kind": "command", "run": [sys.executable, str(script)],
                         "reads": ["text"], "writes": ["label", "pid"]},
        },
    }))
    report = client.start_run(name, {"text": "a long text"}, wait=True).report
    assert report is not None and report.status == "completed", report
    assert report.state["label"] == "long"
    failed = client.start_run(name, {"text": "boom"}, wait=True).report
    assert failed is not None and failed.status == "failed"
    assert "exit code 1" in failed.agents["classify"].error
    assert "ValueError: cannot classify boom" in failed.agents["classify"].error


def test_with_call_passes_the_agent_run_and_attempt(tmp_path: Path) -> None:
    path = tmp_path / "echo_call.py"
    path.write_text(
        "from braid_client.worker import worker\n"
        "@worker(with_call=True)\n"
        "def echo(state, call):\n"
        "    return {'agent': call.agent, 'run': call.run_id, 'attempt': call.attempt, 'got': state}\n"
        "echo.serve()\n"
    )
    done = subprocess.run([sys.executable, str(path)], input=request("hi", attempt=3) + "\n",
                          capture_output=True, text=True, env=dict(os.environ, BRAID_POOLED="1"), timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"agent": "classify", "run": "r1", "attempt": 3, "got": {"text": "hi"}}
