//! The benchmark pipelines, as YAML: the scenarios of the LangGraph peer
//! script, shared by `braid bench` and the divan benchmarks.

/// The seed pipeline with every agent sleeping `ms`.
pub fn seed_yaml(ms: f64) -> String {
    let ms = ms.round() as u64;
    format!(
        "pipeline: seed
agents:
  triage:       {{ kind: sleep, ms: {ms}, writes: [triage_result] }}
  data:         {{ kind: sleep, ms: {ms}, reads: [triage_result], writes: [data_analysis] }}
  metrics:      {{ kind: sleep, ms: {ms}, reads: [triage_result], writes: [metrics_result] }}
  cost:         {{ kind: sleep, ms: {ms}, reads: [triage_result], writes: [cost_result] }}
  optimization: {{ kind: sleep, ms: {ms}, reads: [data_analysis, metrics_result, cost_result], writes: [optimization_plan] }}
  report:       {{ kind: sleep, ms: {ms}, reads: [optimization_plan], writes: [report] }}
"
    )
}

/// The skewed pipeline: triage (L) → slow (10L) ‖ quick (L) → slow2 (9L) → join (L).
pub fn skewed_yaml(l: f64) -> String {
    let ms = |k: f64| (k * l).round() as u64;
    format!(
        "pipeline: skewed
agents:
  triage: {{ kind: sleep, ms: {}, writes: [t] }}
  slow:   {{ kind: sleep, ms: {}, reads: [t], writes: [a] }}
  quick:  {{ kind: sleep, ms: {}, reads: [t], writes: [q] }}
  slow2:  {{ kind: sleep, ms: {}, reads: [q], writes: [b] }}
  join:   {{ kind: sleep, ms: {}, reads: [a, b], writes: [done] }}
",
        ms(1.0),
        ms(10.0),
        ms(1.0),
        ms(9.0),
        ms(1.0)
    )
}

/// 1 → `n` no-op agents in parallel → join.
pub fn wide_yaml(n: usize) -> String {
    let mut out = String::from("pipeline: wide\nagents:\n  start: { kind: sleep, writes: [s] }\n");
    let mut all = Vec::with_capacity(n);
    for i in 0..n {
        out.push_str(&format!(
            "  w{i}: {{ kind: sleep, reads: [s], writes: [f{i}] }}\n"
        ));
        all.push(format!("f{i}"));
    }
    out.push_str(&format!(
        "  join: {{ kind: sleep, reads: [{}], writes: [done] }}\n",
        all.join(", ")
    ));
    out
}

/// A chain of `n` no-op agents.
pub fn deep_yaml(n: usize) -> String {
    let mut out = String::from("pipeline: deep\nagents:\n  d0: { kind: sleep, writes: [f0] }\n");
    for i in 1..n {
        out.push_str(&format!(
            "  d{i}: {{ kind: sleep, reads: [f{}], writes: [f{i}] }}\n",
            i - 1
        ));
    }
    out
}

/// plan → one `work` instance per element of a list of `n` → join: the
/// `fanout` scenario. Each instance sleeps `l` ms; plan and join are no-ops.
pub fn fanout_yaml(n: usize, l: f64) -> String {
    let ms = l.round() as u64;
    let items: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    format!(
        "pipeline: fanout
agents:
  plan: {{ kind: sleep, writes: [items], value: [{}] }}
  work: {{ kind: sleep, ms: {ms}, foreach: items, as: item, reads: [item], writes: [results] }}
  join: {{ kind: sleep, reads: [results], writes: [done] }}
",
        items.join(", ")
    )
}

/// The `mapchain` scenario: 100 items each through extract → classify →
/// summarize (a `foreach` group), plan and join taking `l` ms. The stages
/// are the builtins `stage0`, `stage1` and `stage2` (registered by the
/// caller): stage `s` takes 10L on item `s`, L on the others; ideal 14L.
pub fn mapchain_yaml(n: usize, l: f64) -> String {
    let ms = l.round() as u64;
    let items: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    format!(
        "pipeline: mapchain
agents:
  plan: {{ kind: sleep, ms: {ms}, writes: [items], value: [{}] }}
  item:
    kind: pipeline
    foreach: items
    agents:
      extract:   {{ kind: builtin, function: stage0, reads: [item], writes: [a] }}
      classify:  {{ kind: builtin, function: stage1, reads: [item, a], writes: [b] }}
      summarize: {{ kind: builtin, function: stage2, reads: [item, b], writes: [c] }}
    outputs: {{ results: c }}
  join: {{ kind: sleep, ms: {ms}, reads: [results], writes: [done] }}
",
        items.join(", ")
    )
}

/// The `loop` scenario: draft → critique, repeated until the critique
/// accepts, `rounds` rounds of two `l`-ms agents (ideal 2 × rounds × L).
/// `critique` is the builtin `critique` (registered by the caller), which
/// writes `round + 1`.
pub fn loop_yaml(rounds: u32, l: f64) -> String {
    let ms = l.round() as u64;
    format!(
        "pipeline: loop
agents:
  refine:
    kind: pipeline
    repeat: {{ until: 'critique >= {rounds}', max: {rounds} }}
    agents:
      draft:    {{ kind: sleep, ms: {ms}, reads: [round], writes: [draft] }}
      critique: {{ kind: builtin, function: critique, reads: [draft, round], writes: [critique] }}
    outputs: {{ accepted: critique }}
"
    )
}

/// The `cache` scenario: `n` cached no-op agents (`cache: { ttl: 1h }`)
/// reading the input `seed`, side by side (`chain: false`: each reads
/// `seed`) or one after another (`chain: true`: each reads the one
/// before). A run whose `seed` was seen before hits for every agent.
pub fn cache_yaml(n: usize, chain: bool) -> String {
    let mut out = String::from(
        "pipeline: cache\ninputs: { seed: { type: string } }\ndefaults: { cache: { ttl: 1h } }\nagents:\n",
    );
    for i in 0..n {
        let read = if chain && i > 0 {
            format!("f{}", i - 1)
        } else {
            "seed".to_owned()
        };
        out.push_str(&format!(
            "  c{i}: {{ kind: sleep, reads: [{read}], writes: [f{i}] }}\n"
        ));
    }
    out
}
