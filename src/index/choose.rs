//! Which model's index a command works on: the one `--model` (with `--revision`, `--dtype`) names,
//! or, when none is named, the only one in the file.

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::{ModelKey, ModelRow};
use crate::engine::{ModelOptions, Precision};
use crate::hub;
use crate::Error;

/// Which index file, and which model's index in it.
#[derive(Debug, Clone, Default)]
pub(crate) struct IndexSpec {
    /// `--db`; `None`: the default file in the data folder.
    pub db: Option<PathBuf>,
    pub model: ModelWanted,
    /// Where to run the model when one is needed.
    pub device: String,
}

impl IndexSpec {
    pub(crate) fn path(&self) -> Result<PathBuf> {
        super::db_path(self.db.as_deref())
    }
}

/// A model row as records report it.
pub(crate) fn model_info(row: &ModelRow) -> crate::output::ModelInfo {
    crate::output::ModelInfo {
        id: row.key.model.clone(),
        revision: (!row.key.revision.is_empty()).then(|| row.key.revision.clone()),
        family: row.family.clone(),
        // Stored with the model; an index made before that has only clip and siglip rows, whose
        // family fixes the head.
        head: row
            .head
            .or_else(|| crate::model::head_of_family(&row.family))
            .unwrap_or(crate::model::HeadKind::Softmax),
    }
}

/// The model a command was asked for; every part may be left out.
#[derive(Debug, Clone, Default)]
pub(crate) struct ModelWanted {
    pub model: Option<String>,
    pub revision: Option<String>,
    pub dtype: Option<Precision>,
}

/// How the index stores a `--model`: a Hub id as written, a local folder as its absolute path
/// (symbolic links resolved), so that the same folder is one model from any working directory.
pub(crate) fn model_id(model: &str) -> String {
    if !hub::is_local(model) {
        return model.to_string();
    }
    let path = Path::new(model);
    std::fs::canonicalize(path)
        .or_else(|_| std::path::absolute(path))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| model.to_string())
}

pub(crate) fn precision(dtype: &str) -> Option<Precision> {
    <Precision as clap::ValueEnum>::value_variants()
        .iter()
        .copied()
        .find(|p| p.name() == dtype)
}

fn matches(row: &ModelRow, wanted: &ModelWanted) -> bool {
    wanted
        .model
        .as_deref()
        .is_none_or(|m| model_id(m) == row.key.model)
        && wanted
            .revision
            .as_deref()
            .is_none_or(|r| r == row.key.revision)
        && wanted.dtype.is_none_or(|d| d.name() == row.key.dtype)
}

fn list(models: &[&ModelRow]) -> String {
    models
        .iter()
        .map(|m| format!("{} with {} images", m.key, m.images))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The index among `models` that `wanted` names; `None` when the file has none such. Several
/// matches are a usage error listing them.
pub(crate) fn choose<'a>(
    models: &'a [ModelRow],
    wanted: &ModelWanted,
    db: &Path,
) -> Result<Option<&'a ModelRow>> {
    let found: Vec<&ModelRow> = models.iter().filter(|m| matches(m, wanted)).collect();
    match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        many => Err(Error::Usage(format!(
            "{} holds {} matching indexes ({}); choose one with --model{}",
            db.display(),
            many.len(),
            list(many),
            if wanted.model.is_some() {
                ", --revision or --dtype"
            } else {
                ""
            }
        ))
        .into()),
    }
}

/// [`choose`] for the commands that read an index (`search`, `dupes`): no match is a usage
/// error saying what the file holds.
pub(crate) fn existing<'a>(
    models: &'a [ModelRow],
    wanted: &ModelWanted,
    db: &Path,
) -> Result<&'a ModelRow> {
    if let Some(row) = choose(models, wanted, db)? {
        return Ok(row);
    }
    let message = if models.is_empty() {
        format!(
            "{} is empty: add images with `vlm index PATH...` first",
            db.display()
        )
    } else {
        format!(
            "{} holds no index for {} (it holds: {})",
            db.display(),
            wanted.model.as_deref().unwrap_or("that model"),
            list(&models.iter().collect::<Vec<_>>())
        )
    };
    Err(Error::Usage(message).into())
}

/// The options that load the model an index was made with: its Hub commit, its dtype.
pub(crate) fn load_options(row: &ModelRow, device: &str) -> ModelOptions {
    ModelOptions {
        model: row.key.model.clone(),
        revision: (!row.key.revision.is_empty()).then(|| row.key.revision.clone()),
        device: device.to_string(),
        precision: precision(&row.key.dtype).unwrap_or(Precision::F32),
    }
}

/// The index key of a resolved model.
pub(crate) fn key_of(files: &hub::ModelFiles, precision: Precision) -> ModelKey {
    ModelKey {
        model: if files.revision.is_some() {
            files.id.clone()
        } else {
            model_id(&files.id)
        },
        revision: files.revision.clone().unwrap_or_default(),
        dtype: precision.name().to_string(),
    }
}
