//! The process's exit codes, in one place (as fd's `exit_codes.rs`): `main` and the Ctrl-C handler
//! return these, and the README's "Exit codes" table and `vlm --help` describe them.

/// How a `vlm` process ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    /// Every input was processed (also: stdout closed early, `vlm … | head`).
    Success,
    /// Some inputs failed (each has an error record and a stderr line); the others are in the
    /// output.
    SomeFailed,
    /// Usage, model or output error: nothing, or not everything, could be done.
    Error,
    /// Stopped by Ctrl-C or SIGTERM (128 + SIGINT, as shells report it).
    Interrupted,
}

impl ExitCode {
    /// The number the process exits with.
    pub const fn code(self) -> u8 {
        match self {
            ExitCode::Success => 0,
            ExitCode::SomeFailed => 1,
            ExitCode::Error => 2,
            ExitCode::Interrupted => 130,
        }
    }

    /// Ends the process now with this code (for the signal handler, which cannot return to `main`).
    pub fn exit(self) -> ! {
        std::process::exit(i32::from(self.code()))
    }
}

impl From<ExitCode> for std::process::ExitCode {
    fn from(code: ExitCode) -> Self {
        std::process::ExitCode::from(code.code())
    }
}

impl From<crate::commands::Outcome> for ExitCode {
    fn from(outcome: crate::commands::Outcome) -> Self {
        match outcome {
            crate::commands::Outcome::Success => ExitCode::Success,
            crate::commands::Outcome::SomeFailed => ExitCode::SomeFailed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ExitCode;
    use crate::commands::Outcome;

    #[test]
    fn codes_are_the_documented_ones() {
        assert_eq!(ExitCode::Success.code(), 0);
        assert_eq!(ExitCode::SomeFailed.code(), 1);
        assert_eq!(ExitCode::Error.code(), 2);
        assert_eq!(ExitCode::Interrupted.code(), 130);
        assert_eq!(ExitCode::from(Outcome::Success), ExitCode::Success);
        assert_eq!(ExitCode::from(Outcome::SomeFailed), ExitCode::SomeFailed);
    }
}
