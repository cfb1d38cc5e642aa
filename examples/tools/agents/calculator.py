"""The one tool: `add`, with a list of numbers. Reads `tool_call`, writes `tool_result`."""
import json
import sys

call = json.load(sys.stdin)["state"]["tool_call"]
if call.get("name") != "add":
    sys.exit(f"unknown tool {call.get('name')!r}")
json.dump({"tool_result": {"value": sum(call["arguments"]), "step": call["step"]}}, sys.stdout)
