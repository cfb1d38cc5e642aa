"""Answers with whichever desk replied."""
import json
import sys

state = json.load(sys.stdin)["state"]
reply = state.get("refund_reply") or state.get("tech_reply") or "Nobody could take it."
json.dump({"answer": f"Thanks for writing. {reply}"}, sys.stdout)
