"""Writes a Markdown report from the summaries (a failed document is `null`)."""
import json
import sys

summaries = json.load(sys.stdin)["state"]["summaries"]
lines = ["# Documents", ""]
for s in summaries:
    if s is None:
        lines.append("- (a document could not be summarised)")
    else:
        lines.append(f"{s['n']}. **{s['name']}** ({s['words']} words): {s['gist']}")
json.dump({"report": "\n".join(lines)}, sys.stdout)
