use std::process::ExitCode;

use clap::Parser;
use vlm::app::{self, Outcome};
use vlm::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match app::run(cli) {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::SomeFailed) => ExitCode::from(1),
        Err(err) if app::is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("vlm: {}", app::one_line(&err));
            ExitCode::from(2)
        }
    }
}
