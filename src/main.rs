//! highserve: a model-serving daemon for images and video frames.
//!
//! `highserve serve` is the supervisor; it re-executes this binary with the
//! hidden `child` command for each worker process, so parent and children are
//! always the same version.
#![forbid(unsafe_code)]

mod bench;
mod child;
mod config;
mod control;
mod models;
mod notify;
mod placement;
mod restart;
mod supervisor;
mod telemetry;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "highserve", version, about = "Model-serving daemon for images and video frames")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (supervisor, inference workers, preproc pool, frontend).
    Serve {
        /// Daemon configuration file.
        #[arg(long, short, env = "HIGHSERVE_CONFIG", default_value = "configs/default.toml")]
        config: PathBuf,
        /// Directory for run-time files: `ready` (the URL, written once every
        /// process is ready).
        #[arg(long, env = "HIGHSERVE_RUN_DIR")]
        run_dir: Option<PathBuf>,
        #[command(flatten)]
        overrides: config::Overrides,
    },
    /// Drive a running daemon with a closed-loop load and print throughput and latency.
    Bench(bench::Args),
    /// A worker process (started by `serve`, not by hand): `child frontend`,
    /// `child inference N` or `child preproc N`.
    #[command(hide = true)]
    Child { kind: String, index: Option<u16> },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config, run_dir, overrides } => serve(config, run_dir, overrides),
        Command::Bench(args) => bench::main(args).map(|()| 0),
        Command::Child { kind, index } => {
            shm::Role::from_parts(&kind, index).map_err(anyhow::Error::msg).and_then(child::main).map(|()| 0)
        }
    };
    match result {
        Ok(code) => std::process::ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("highserve: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn serve(config: PathBuf, run_dir: Option<PathBuf>, overrides: config::Overrides) -> anyhow::Result<i32> {
    let cfg = config::Config::load(&config, &overrides)?;
    telemetry::init("supervisor", cfg.log.format, &cfg.log.level);
    if let Some(dir) = &run_dir {
        std::fs::create_dir_all(dir)?;
        let _ = std::fs::remove_file(dir.join("ready"));
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let sup = supervisor::Supervisor::new(cfg, run_dir)?;
        sup.run().await
    })
}
