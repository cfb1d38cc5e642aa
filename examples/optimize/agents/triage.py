"""Routes the request: cost, latency, quality or mixed. By keyword rules, or
by asking the model at BRAID_LLM_URL (OpenAI-compatible) when that is set."""
import json
import os
import sys
import urllib.request

request = json.load(sys.stdin)["state"]["request"]
route = None
url = os.environ.get("BRAID_LLM_URL")
if url:
    body = {
        "model": os.environ.get("BRAID_LLM_MODEL", "default"),
        "messages": [{"role": "user", "content":
                      "Classify this request as one word: cost, latency, quality or mixed.\n" + request}],
        "max_tokens": 5,
    }
    try:
        req = urllib.request.Request(url.rstrip("/") + "/chat/completions", json.dumps(body).encode(),
                                     {"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=20) as answer:
            word = json.load(answer)["choices"][0]["message"]["content"].strip().lower()
        route = next((r for r in ("cost", "latency", "quality", "mixed") if r in word), None)
        print(f"model routed the request to {route}", file=sys.stderr)
    except Exception as error:  # fall back to the rules
        print(f"model unavailable ({error}); using rules", file=sys.stderr)
if route is None:
    text = request.lower()
    wants = {
        "cost": any(w in text for w in ("cost", "spend", "cheaper", "budget", "price")),
        "latency": any(w in text for w in ("latency", "slow", "fast", "p95", "response time")),
        "quality": any(w in text for w in ("quality", "accuracy", "errors", "hallucinat")),
    }
    chosen = [k for k, v in wants.items() if v]
    route = chosen[0] if len(chosen) == 1 else ("mixed" if chosen else "cost")
json.dump({"triage_result": {"route": route, "request": request}}, sys.stdout)
