"""A local scripted stand-in for an OpenAI-compatible chat model, for the
research example, so it runs without a key:

    python3 stub_model.py PORT      (PORT 0: any free port; the port is printed on stdout)

It follows the conversation it is sent: first it calls `search_docs` with
the question; then it reads the top hit's file around that line with the
MCP server's `read_text_file`; then it answers, quoting the two best hits
and citing them as [FILE:LINE]. Answers are non-streaming chat completions
with OpenAI-style `tool_calls`.
"""
import http.server
import json
import sys


def call(id, name, arguments):
    return {"id": id, "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


def reply(messages):
    question = next(m["content"] for m in messages if m["role"] == "user")
    results = {m["tool_call_id"]: m["content"] for m in messages if m["role"] == "tool"}
    if "search" not in results:
        return {"role": "assistant", "content": None,
                "tool_calls": [call("search", "search_docs", {"q": question, "limit": 5})]}
    hits = json.loads(results["search"]).get("hits", []) if not results["search"].startswith("error") else []
    if not hits:
        return {"role": "assistant", "content": "The docs say nothing about that."}
    if "read" not in results:
        top = hits[0]
        return {"role": "assistant", "content": None,
                "tool_calls": [call("read", "read_text_file", {"path": top["path"], "head": top["line"] + 3})]}
    cited = [f'{h["text"]} [{h["file"]}:{h["line"]}]' for h in hits[:2]]
    return {"role": "assistant", "content": "From the docs: " + " ".join(cited)}


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if body.get("stream"):
            # Streamed (braid asks for it when someone watches the run's
            # log): the whole message as one delta, tool calls indexed.
            delta = dict(reply(body["messages"]))
            for index, c in enumerate(delta.get("tool_calls", [])):
                c["index"] = index
            chunk = {"choices": [{"index": 0, "delta": delta}]}
            data = f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        answer = {
            "id": "stub",
            "object": "chat.completion",
            "model": body.get("model", "stub"),
            "choices": [{"index": 0, "message": reply(body["messages"]), "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        }
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()
