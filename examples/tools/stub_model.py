"""A local stand-in for an OpenAI-compatible chat model, for the tool-calling example.

    python3 stub_model.py PORT      (PORT 0: any free port; the port is printed on stdout)

It reads the numbers in the question and adds them with the `add` tool, two
at a time: each answer is a tool call, until the last observation holds the
total, and then it answers. Answers are non-streaming chat completions.
"""
import http.server
import json
import re
import sys


def reply(messages):
    prompt = messages[-1]["content"]
    question, _, observation = prompt.partition("\nObservation: ")
    numbers = [int(n) for n in re.findall(r"-?\d+", question)]
    if observation:
        seen = json.loads(observation)
        total, step = seen["value"], seen["step"]
    else:
        total, step = numbers[0], 1
    if step >= len(numbers):
        return {"answer": f"The total is {total}."}
    return {"tool_call": {"name": "add", "arguments": [total, numbers[step]], "step": step + 1}}


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        content = json.dumps(reply(body["messages"]))
        answer = {
            "id": "stub",
            "object": "chat.completion",
            "model": body.get("model", "stub"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
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
    server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()
