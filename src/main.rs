use std::process::ExitCode;

use clap::Parser;
use stepgate::cli::{Cli, run};

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("stepgate: {e:#}");
            ExitCode::from(2)
        }
    }
}
