"""A braid command agent: reads one JSON request on stdin, prints its writes.

The request is {"agent": NAME, "run_id": ID, "attempt": N, "state": {READS...}};
lines on stderr are the agent's log (`braid run --verbose` shows them live).
"""

import json
import sys

request = json.load(sys.stdin)
state = request["state"]
if "--summary" in sys.argv:
    print(f"summarising {state['word_count']} words", file=sys.stderr)
    json.dump({"summary": f"{state['word_count']} words, checked: {state['checked']}"}, sys.stdout)
else:
    words = state["text"].split()
    print(f"counted {len(words)} words", file=sys.stderr)
    json.dump({"word_count": len(words)}, sys.stdout)
