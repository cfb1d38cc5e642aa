"""Proposes concrete changes with estimated monthly savings, each with its
arithmetic, from the cost, volume and latency analyses."""
import json
import sys

state = json.load(sys.stdin)["state"]
prices = {p["model"]: p for p in state["prices"]}
latency = {m["model"]: m for m in state["metrics_result"]}
CHEAPER = {"gpt-4o": "gpt-4o-mini", "claude-3-5-sonnet": "claude-3-haiku"}


def usd(x):
    return round(x, 2)


proposals = []
for row in state["cost_result"]:
    team, model = row["team"], row["model"]
    # 1. Short prompts on an expensive model -> its cheaper sibling.
    cheap = CHEAPER.get(model)
    if cheap and row["short_prompts"]:
        now = row["short_prompt_spend_usd"]
        then = (row["short_prompt_tokens"] * prices[cheap]["input_per_mtok"]
                + row["short_completion_tokens"] * prices[cheap]["output_per_mtok"]) / 1e6
        p95_now, p95_then = latency[model]["p95_ms"], latency[cheap]["p95_ms"]
        proposals.append({
            "kind": "cheaper_model", "team": team, "from": model, "to": cheap,
            "savings_usd": usd(now - then),
            "arithmetic": (f"{row['short_prompts']} prompts under 500 tokens cost ${now:.2f} on {model}; "
                           f"at {cheap} prices ({row['short_prompt_tokens']} in × ${prices[cheap]['input_per_mtok']}/M + "
                           f"{row['short_completion_tokens']} out × ${prices[cheap]['output_per_mtok']}/M) they cost ${then:.2f}"),
            "latency": f"p95 {p95_now:.0f} ms on {model}, {p95_then:.0f} ms on {cheap}",
        })
    # 2. Repeated prompts not served from the cache.
    if row["repeated_prompt_tokens"]:
        saved = row["repeated_prompt_tokens"] * prices[model]["input_per_mtok"] * 0.9 / 1e6
        if saved >= 0.01:
            proposals.append({
                "kind": "enable_caching", "team": team, "model": model, "savings_usd": usd(saved),
                "arithmetic": (f"{row['repeated_prompt_tokens']} input tokens repeat earlier prompts; cached input costs 10%: "
                               f"{row['repeated_prompt_tokens']} × ${prices[model]['input_per_mtok']}/M × 0.9 = ${saved:.2f}"),
            })
    # 3. Batch jobs run at peak hours -> the batch API, at half price.
    if row["batch_peak_spend_usd"] >= 0.01:
        saved = row["batch_peak_spend_usd"] * 0.5
        proposals.append({
            "kind": "batch_off_peak", "team": team, "model": model, "savings_usd": usd(saved),
            "arithmetic": f"batch jobs in working hours cost ${row['batch_peak_spend_usd']:.2f}; the batch API halves that: ${saved:.2f}",
        })

proposals.sort(key=lambda p: -p["savings_usd"])
total_spend = sum(r["spend_usd"] for r in state["cost_result"])
total_savings = sum(p["savings_usd"] for p in proposals)
json.dump({"optimization_plan": {
    "total_spend_usd": usd(total_spend),
    "total_savings_usd": usd(total_savings),
    "proposals": proposals,
}}, sys.stdout)
