"""Routes a request: money matters to the refund desk, the rest to tech support."""
import json
import sys

request = json.load(sys.stdin)["state"]["request"]
words = request.lower()
if any(w in words for w in ("refund", "charged", "invoice", "money")):
    json.dump({"refund_case": {"text": request, "priority": "high" if "twice" in words else "normal"}}, sys.stdout)
else:
    json.dump({"tech_case": {"text": request}}, sys.stdout)
