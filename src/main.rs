use clap::error::ErrorKind;
use clap::Parser;
use vlm::cli::{clap_one_line, Cli};
use vlm::error::{is_broken_pipe, one_line};
use vlm::exit_codes::ExitCode;
use vlm::output::report_error;

// Lets model weights stay in the mapped checkpoint instead of being copied (see `vlm::alloc`).
#[global_allocator]
static ALLOC: vlm::alloc::Allocator = vlm::alloc::Allocator;

fn main() -> std::process::ExitCode {
    // SAFETY: `ALLOC` above, a `vlm::alloc::Allocator`, is this program's global allocator.
    unsafe { vlm::alloc::enable_in_place() };
    // A decoder panic costs one image and one line on stderr, not the standard panic message too.
    vlm::pool::quiet_caught_panics();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version print to stdout and succeed.
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            e.exit()
        }
        // Bare `vlm`: the help, listing the commands, on stderr; a usage error.
        Err(e) if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            eprint!("{}", e.render().ansi());
            return ExitCode::Error.into();
        }
        Err(e) => {
            report_error(&clap_one_line(&e));
            return ExitCode::Error.into();
        }
    };
    let code = match cli.run() {
        Ok(outcome) => ExitCode::from(outcome),
        Err(err) if is_broken_pipe(&err) => ExitCode::Success,
        Err(err) => {
            report_error(&one_line(&err));
            ExitCode::Error
        }
    };
    code.into()
}
