//! `vlm aspects`'s arguments and the options they become.

use clap::Args;

use crate::commands::aspects::AspectsOptions;
use crate::output::ListFormat;

#[derive(Debug, Args)]
pub(crate) struct AspectsArgs {
    /// Aspects to show in full, with their labels: built-in names, `all`, or aspect files. Without
    /// any, a summary of the built-in aspects.
    #[arg(value_name = "NAME|FILE")]
    pub aspects: Vec<String>,

    /// Output format. Default: table on a terminal, json otherwise; `labels` prints the named
    /// aspects' labels one per line.
    #[arg(short, long, value_enum)]
    pub format: Option<ListFormat>,
}

impl From<AspectsArgs> for AspectsOptions {
    fn from(a: AspectsArgs) -> Self {
        AspectsOptions {
            aspects: a.aspects,
            format: a.format,
        }
    }
}
