//! `braid worker`: runs agents for coordinators elsewhere (`braid serve
//! --nats`, `braid run --nats`), pulling their tasks from NATS JetStream.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use braid_core::Pipeline;
use clap::Args;

use crate::exit;

#[derive(Debug, Args)]
pub(crate) struct WorkerArgs {
    /// The NATS server (with JetStream) tasks come from.
    #[arg(long, env = "BRAID_NATS", value_name = "URL")]
    nats: String,
    /// A queue to take tasks from (an agent's `queue:`). Repeatable
    /// [default: default].
    #[arg(long = "queue", value_name = "NAME", value_parser = parse_queue)]
    queues: Vec<String>,
    /// How many agents it runs at once.
    #[arg(long, default_value_t = 16,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100_000))]
    slots: usize,
    /// The pipeline files whose agents it runs: every *.yaml, *.yml and
    /// *.json in this folder and its subfolders (as `braid serve
    /// --pipelines`). They must be the coordinator's: a task for an agent
    /// defined otherwise here is refused.
    #[arg(long, default_value = ".")]
    pipelines: PathBuf,
    /// How long a task may go without a sign of life from its worker
    /// before it is given to another (the consumer's ack_wait; the worker
    /// signs every third of it while an agent runs). Set once per queue:
    /// the consumer keeps the first worker's value.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    ack_wait: Duration,
    /// How many times a task is delivered before it is dead-lettered
    /// (braid.dead.QUEUE) and its agent failed. Set once per queue, as
    /// --ack-wait.
    #[arg(long, default_value_t = 5,
          value_parser = clap::builder::RangedI64ValueParser::<i64>::new().range(1..=1000))]
    max_deliver: i64,
    /// On SIGTERM or Ctrl-C, how long agents in flight may take to finish;
    /// the tasks of those still running are then redelivered elsewhere.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    grace: Duration,
    /// The longest one agent call may take on this worker (e.g. `10m`),
    /// whatever its pipeline says: a call still running then fails with a
    /// timeout, so an agent without `timeout:` cannot hold a slot for ever.
    /// Without it, agents without `timeout:` are not limited.
    #[arg(long, value_name = "DURATION", value_parser = crate::cmd::serve::parse_interval)]
    max_task_time: Option<Duration>,
}

fn parse_queue(text: &str) -> Result<String, String> {
    if braid_nats::valid_queue(text) {
        Ok(text.to_owned())
    } else {
        Err(braid_nats::NatsError::BadQueue(text.to_owned()).to_string())
    }
}

pub(crate) fn worker(args: WorkerArgs) -> anyhow::Result<ExitCode> {
    let mut pipelines: Vec<Pipeline> = Vec::new();
    let mut skipped = 0;
    for path in super::serve::pipeline_files(&args.pipelines)? {
        match Pipeline::from_file_with(&path, &crate::kinds()) {
            Ok(pipeline) => {
                if pipelines.iter().any(|p| p.name() == pipeline.name()) {
                    eprintln!(
                        "error: two files under {} define pipeline `{}`; names must be unique",
                        args.pipelines.display(),
                        pipeline.name()
                    );
                    return Ok(ExitCode::from(exit::INVALID));
                }
                pipelines.push(pipeline);
            }
            Err(err) => {
                for d in err.diagnostics() {
                    eprintln!("error: {d}");
                }
                skipped += 1;
            }
        }
    }
    if pipelines.is_empty() {
        eprintln!(
            "error: no pipeline loaded from {}{}; a worker runs the agents of the pipelines it holds",
            args.pipelines.display(),
            if skipped > 0 { " (errors above)" } else { "" }
        );
        return Ok(ExitCode::from(exit::INVALID));
    }
    let queues = if args.queues.is_empty() {
        vec![braid_nats::DEFAULT_QUEUE.to_owned()]
    } else {
        args.queues.clone()
    };
    let settings = braid_nats::WorkerSettings {
        queues: queues.clone(),
        slots: args.slots,
        ack_wait: args.ack_wait,
        max_deliver: args.max_deliver,
        grace: args.grace,
        max_task_time: args.max_task_time,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let worker = braid_nats::Worker::new(&pipelines);
    let names: Vec<&str> = pipelines.iter().map(Pipeline::name).collect();
    eprintln!(
        "braid: worker {} on {}: queues {}, {} slots, pipelines {}",
        worker.name(),
        args.nats,
        queues.join(", "),
        args.slots,
        names.join(", ")
    );
    runtime.block_on(worker.run(&args.nats, settings, super::serve::shutdown_signal()))?;
    // Agents killed at the end of the grace period are reaped in the background.
    runtime.shutdown_timeout(Duration::from_secs(1));
    eprintln!("braid: worker stopped");
    Ok(ExitCode::SUCCESS)
}
