"""Writes the answer as Markdown: what was asked, where the money goes,
latency by model, and the proposals with their arithmetic."""
import json
import sys

state = json.load(sys.stdin)["state"]
plan = state["optimization_plan"]
route = state["triage_result"]["route"]
lines = [
    "# How to cut LLM spend without hurting latency",
    "",
    f"> {state['triage_result']['request']}",
    "",
    f"Route: **{route}**. Sample: {state['dataset']['records']} calls. "
    f"Spend: **${plan['total_spend_usd']:.2f}**; the proposals below save an estimated "
    f"**${plan['total_savings_usd']:.2f}** ({100 * plan['total_savings_usd'] / max(plan['total_spend_usd'], 1e-9):.1f}%).",
    "",
    "## Where the money goes",
    "",
    "| team | model | requests | spend | cache savings so far |",
    "|---|---|---:|---:|---:|",
]
volume = {(v["team"], v["model"]): v["requests"] for v in state["data_analysis"]}
for row in state["cost_result"]:
    lines.append(f"| {row['team']} | {row['model']} | {volume.get((row['team'], row['model']), 0)} | "
                 f"${row['spend_usd']:.2f} | ${row['cache_savings_usd']:.2f} |")
lines += ["", "## Latency and errors by model", "", "| model | requests | p50 | p95 | p99 | error rate |",
          "|---|---:|---:|---:|---:|---:|"]
for m in state["metrics_result"]:
    lines.append(f"| {m['model']} | {m['requests']} | {m['p50_ms']:.0f} ms | {m['p95_ms']:.0f} ms | "
                 f"{m['p99_ms']:.0f} ms | {100 * m['error_rate']:.2f}% |")
lines += ["", "## Proposals", "",
          "Estimates overlap where two proposals touch the same calls; they are not netted.", ""]
for i, p in enumerate(plan["proposals"], 1):
    who = f"{p['team']}: " + (f"{p['from']} → {p['to']}" if p["kind"] == "cheaper_model" else p["model"])
    lines.append(f"{i}. **{p['kind'].replace('_', ' ')}** ({who}): save **${p['savings_usd']:.2f}**. {p['arithmetic']}."
                 + (f" Latency: {p['latency']}." if "latency" in p else ""))
json.dump({"report": "\n".join(lines)}, sys.stdout)
