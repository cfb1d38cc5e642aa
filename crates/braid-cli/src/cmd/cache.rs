//! `braid cache clear`: drops cached agents' results from the store, for
//! when what the cache key does not cover (a command agent's program, a
//! builtin's code) changed.

use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::run::{StoreArgs, runtime};

#[derive(Debug, Args)]
pub(crate) struct CacheArgs {
    #[command(subcommand)]
    command: CacheCommand,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Debug, Subcommand)]
enum CacheCommand {
    /// Delete cached results: every agent's, or one agent's.
    Clear {
        /// Only this agent's results (its name in the pipeline, without
        /// an instance's index or a group's path).
        #[arg(long)]
        agent: Option<String>,
    },
}

pub(crate) fn cache(args: CacheArgs) -> anyhow::Result<ExitCode> {
    let runtime = runtime()?;
    let result = runtime.block_on(async {
        let store = args.store.open_writable().await?;
        let CacheCommand::Clear { agent } = &args.command;
        let deleted = store.clear_cache(agent.as_deref()).await?;
        let whose = agent
            .as_deref()
            .map_or_else(String::new, |a| format!(" of agent `{a}`"));
        println!(
            "deleted {deleted} cached result(s){whose} from {}",
            store.url()
        );
        anyhow::Ok(())
    });
    runtime.shutdown_background();
    result.map(|()| ExitCode::SUCCESS)
}
