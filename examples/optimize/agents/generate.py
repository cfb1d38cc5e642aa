"""Writes a realistic, seeded sample of LLM API usage into data/usage.db.

One row per call: time, team, model, prompt and completion tokens, latency,
status, cache hit, whether the prompt repeats an earlier one, whether it is a
batch job, and its cost at the model's price. Skips the work when the file
already holds the same sample. Reads `records` (default 100000); writes
`dataset`.
"""
import json
import math
import os
import random
import sqlite3
import sys

request = json.load(sys.stdin)
records = int(request["state"].get("records", 100_000))
seed = 42
path = os.path.join("data", "usage.db")
os.makedirs("data", exist_ok=True)

# USD per million tokens: (input, output). Cached input costs 10%.
PRICES = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "claude-3-5-sonnet": (3.00, 15.00),
    "claude-3-haiku": (0.25, 1.25),
    "llama-3-70b": (0.60, 0.80),
}
# Per model: median latency (ms) at 1k completion tokens' worth, error rate.
LATENCY = {"gpt-4o": (900, 0.012), "gpt-4o-mini": (450, 0.008), "claude-3-5-sonnet": (1100, 0.010),
           "claude-3-haiku": (420, 0.006), "llama-3-70b": (700, 0.020)}
# Per team: model mix, typical prompt size, share of repeated prompts, share of batch jobs.
TEAMS = {
    "support":   ({"gpt-4o": 0.7, "gpt-4o-mini": 0.3}, 300, 0.35, 0.00),
    "search":    ({"gpt-4o-mini": 0.6, "claude-3-haiku": 0.4}, 800, 0.50, 0.00),
    "analytics": ({"claude-3-5-sonnet": 0.8, "llama-3-70b": 0.2}, 3000, 0.10, 0.60),
    "growth":    ({"gpt-4o": 0.5, "claude-3-5-sonnet": 0.5}, 450, 0.20, 0.30),
    "platform":  ({"llama-3-70b": 0.7, "gpt-4o-mini": 0.3}, 1200, 0.05, 0.10),
}
TEAM_WEIGHTS = {"support": 0.30, "search": 0.25, "analytics": 0.15, "growth": 0.15, "platform": 0.15}


def existing(conn):
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'sample'").fetchone()
        return row and row[0]
    except sqlite3.Error:
        return None


sample = f"seed={seed};records={records}"
conn = sqlite3.connect(path)
if existing(conn) != sample:
    print(f"generating {records} usage records", file=sys.stderr)
    conn.executescript("""
        DROP TABLE IF EXISTS calls; DROP TABLE IF EXISTS prices; DROP TABLE IF EXISTS meta;
        CREATE TABLE prices (model TEXT PRIMARY KEY, input_per_mtok REAL, output_per_mtok REAL);
        CREATE TABLE calls (id INTEGER PRIMARY KEY, ts TEXT, team TEXT, model TEXT,
            prompt_tokens INTEGER, completion_tokens INTEGER, latency_ms REAL, status TEXT,
            cache_hit INTEGER, repeated INTEGER, batch INTEGER, cost_usd REAL);
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
    """)
    conn.executemany("INSERT INTO prices VALUES (?, ?, ?)", [(m, i, o) for m, (i, o) in PRICES.items()])
    rng = random.Random(seed)
    teams, weights = zip(*TEAM_WEIGHTS.items())
    rows = []
    for i in range(records):
        team = rng.choices(teams, weights)[0]
        mix, prompt_size, repeat_share, batch_share = TEAMS[team]
        model = rng.choices(list(mix), list(mix.values()))[0]
        prompt = max(20, int(rng.lognormvariate(math.log(prompt_size), 0.6)))
        completion = max(5, int(rng.lognormvariate(math.log(200), 0.7)))
        repeated = 1 if rng.random() < repeat_share else 0
        cache_hit = 1 if repeated and rng.random() < 0.3 else 0
        batch = 1 if rng.random() < batch_share else 0
        hour = rng.randint(0, 23) if not batch else rng.choice([10, 11, 14, 15, 16, 2, 3])
        base, error_rate = LATENCY[model]
        latency = base * (0.4 + completion / 400) * rng.lognormvariate(0, 0.35)
        status = "error" if rng.random() < error_rate else "ok"
        price_in, price_out = PRICES[model]
        cost = (prompt * price_in * (0.1 if cache_hit else 1.0) + completion * price_out) / 1e6
        day = 1 + i * 30 // records
        rows.append((i, f"2026-10-{day:02d}T{hour:02d}:{rng.randint(0, 59):02d}:00Z", team, model,
                     prompt, completion, round(latency, 1), status, cache_hit, repeated - cache_hit, batch, cost))
    conn.executemany("INSERT INTO calls VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    conn.execute("INSERT INTO meta VALUES ('sample', ?)", (sample,))
    conn.commit()
count = conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
json.dump({"dataset": {"path": path, "records": count, "seed": seed}}, sys.stdout)
