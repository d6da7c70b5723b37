//! `vlm index`'s arguments and the options they become.

use std::path::PathBuf;

use clap::Args;

use super::shared::{EncodeArgs, IndexDbArgs, InputArgs};
use crate::commands::index::IndexOptions;

#[derive(Debug, Args)]
// Paths are optional: without any (and without --merge, --prune or --export) `vlm index` shows
// the index (issue 23.10).
#[command(mut_arg("paths", |a| a.required_unless_present(clap::builder::Resettable::<clap::Id>::Reset)))]
pub(crate) struct IndexArgs {
    #[command(flatten)]
    pub inputs: InputArgs,

    /// Copy these index files into this one first (e.g. ones made on several machines with
    /// --shard K/N); a file in both keeps the copy indexed last. Put paths to index before it.
    #[arg(long, value_name = "DB", num_args = 1..)]
    pub merge: Vec<PathBuf>,

    /// Write the model's embeddings, as stored, to FILE.npy (float32 N x D) and the paths to
    /// FILE.paths.txt, as `vlm embed -f npy` does: a library indexed once need not be embedded
    /// again. After indexing the paths given, if any.
    #[arg(long, value_name = "FILE.npy")]
    pub export: Option<PathBuf>,

    /// Overwrite an existing --export file (without it an existing file is refused).
    #[arg(long, requires = "export")]
    pub force: bool,

    /// Also remove every file of this model's index that no longer exists, wherever it was indexed
    /// from. (Files gone from under the folders given are always removed.)
    #[arg(long)]
    pub prune: bool,

    #[command(flatten)]
    pub index: IndexDbArgs,

    #[command(flatten)]
    pub encode: EncodeArgs,

    /// Report on stderr whether the model was loaded and how long it took.
    #[arg(short, long, conflicts_with = "quiet")]
    pub verbose: bool,

    /// No summary, warnings or progress on stderr (errors are still reported).
    #[arg(short, long)]
    pub quiet: bool,
}

impl From<IndexArgs> for IndexOptions {
    fn from(a: IndexArgs) -> Self {
        IndexOptions {
            inputs: a.inputs.into(),
            index: a.index.into(),
            batch: a.encode.into(),
            prune: a.prune,
            merge: a.merge,
            export: a.export,
            force: a.force,
            verbose: a.verbose,
            quiet: a.quiet,
        }
    }
}
