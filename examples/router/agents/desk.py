"""One desk's reply. argv[1] names the desk; it reads `<desk>_case`, writes `<desk>_reply`."""
import json
import sys

desk = sys.argv[1]
case = json.load(sys.stdin)["state"][f"{desk}_case"]
if desk == "refund":
    reply = f"A refund was opened ({case['priority']} priority)."
else:
    reply = "A technician will look into it."
json.dump({f"{desk}_reply": reply}, sys.stdout)
