use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;
use vlm::app::{self, Outcome};
use vlm::cli::Cli;
use vlm::output;

// Lets model weights stay in the mapped checkpoint instead of being copied (see `vlm::alloc`).
#[global_allocator]
static ALLOC: vlm::alloc::Allocator = vlm::alloc::Allocator;

fn main() -> ExitCode {
    // SAFETY: `ALLOC` above, a `vlm::alloc::Allocator`, is this program's global allocator.
    unsafe { vlm::alloc::enable_in_place() };
    // A decoder panic costs one image and one line on stderr, not the standard panic message too.
    vlm::pipeline::quiet_caught_panics();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version print to stdout and succeed.
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            e.exit()
        }
        Err(e) => {
            output::report_error(&app::clap_one_line(&e));
            return ExitCode::from(2);
        }
    };
    match app::run(cli) {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::SomeFailed) => ExitCode::from(1),
        Err(err) if app::is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            output::report_error(&app::one_line(&err));
            ExitCode::from(2)
        }
    }
}
