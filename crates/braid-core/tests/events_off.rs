//! With events off (no sink), a run builds no event at all. In a file of
//! its own: it reads a process-wide counter that other tests would move.

use braid_core::event::{EventLevel, EventSink, events_built};
use braid_core::{Pipeline, RunOptions};

#[tokio::test]
async fn a_run_without_a_sink_builds_no_events_and_one_with_a_sink_does() {
    let pipeline = Pipeline::from_yaml_str(
        "pipeline: p
agents:
  a: { kind: sleep, writes: [x] }
  b: { kind: sleep, reads: [x], writes: [y], retries: 1 }
  c: { kind: command, run: [sh, -c, 'echo noisy >&2; echo {}'], reads: [y] }
  d: { kind: sleep, reads: [x], writes: [z], when: 'x == false' }
",
    )
    .unwrap();
    let input = pipeline.check_input(&serde_json::json!({})).unwrap();
    let before = events_built();
    for _ in 0..10 {
        let report = pipeline.run(input.clone(), RunOptions::default()).await;
        assert!(report.status.is_success());
    }
    assert_eq!(events_built(), before, "events off: nothing built");

    let (sink, mut rx) = EventSink::channel(EventLevel::Full);
    pipeline
        .run(
            input,
            RunOptions {
                events: Some(sink),
                ..Default::default()
            },
        )
        .await;
    let mut received = 0;
    while rx.try_recv().is_ok() {
        received += 1;
    }
    assert!(received > 0);
    assert_eq!(events_built(), before + received);
}
