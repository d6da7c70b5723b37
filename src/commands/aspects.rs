//! `vlm aspects`: the built-in aspects, or the named ones in full.

use std::io::IsTerminal;

use anyhow::Result;

use super::Outcome;
use crate::error::escape_controls;
use crate::output::{self, AspectInfo, ListFormat};
use crate::tagging::aspects;
use crate::tagging::rules::{aspect_info, label_thresholds, Rule};

/// Everything `vlm aspects` needs.
#[derive(Debug, Clone, Default)]
pub(crate) struct AspectsOptions {
    /// Aspects to show in full; empty for a summary of the built-ins.
    pub aspects: Vec<String>,
    /// `None`: a table on a terminal, JSON otherwise.
    pub format: Option<ListFormat>,
}

/// One aspect in `vlm aspects --format json`: its description, rule and (when asked for) labels.
#[derive(Debug, serde::Serialize)]
struct AspectListing {
    #[serde(flatten)]
    info: AspectInfo,
    #[serde(skip_serializing_if = "Option::is_none")]
    neutral: Option<Vec<String>>,
    /// Each label with its prompts; only when aspects are named.
    #[serde(skip_serializing_if = "Option::is_none")]
    label_prompts: Option<Vec<LabelListing>>,
}

#[derive(Debug, serde::Serialize)]
struct LabelListing {
    label: String,
    prompts: Vec<String>,
}

/// `vlm aspects`: a summary of the built-ins, or the named aspects in full.
pub(crate) fn run(opts: &AspectsOptions, out: &mut impl std::io::Write) -> Result<Outcome> {
    let detailed = !opts.aspects.is_empty();
    let list = if detailed {
        aspects::resolve(&opts.aspects)?
    } else {
        aspects::builtins()
    };
    // Piped, JSON, as every other command writes (issue 23: named aspects used to come as bare
    // labels); `-f labels` gives them one per line (for `grep`, `wc -l`, `while read`).
    let format = opts.format.unwrap_or(if std::io::stdout().is_terminal() {
        ListFormat::Table
    } else {
        ListFormat::Json
    });
    let listings: Vec<AspectListing> = list
        .iter()
        .map(|a| {
            let rule = Rule::resolve(a.kind, (a.top_k, a.threshold), (None, None));
            AspectListing {
                info: aspect_info(a, &rule, &label_thresholds(a, &rule, None)),
                neutral: a.neutral.as_ref().map(|n| a.prompts_for(n)),
                label_prompts: detailed.then(|| {
                    a.labels
                        .iter()
                        .map(|l| LabelListing {
                            label: l.name.clone(),
                            prompts: a.prompts_for(l),
                        })
                        .collect()
                }),
            }
        })
        .collect();
    let bytes = match format {
        ListFormat::Labels => listings
            .iter()
            .flat_map(|l| l.label_prompts.iter().flatten())
            .map(|p| format!("{}\n", escape_controls(&p.label)))
            .collect::<String>()
            .into_bytes(),
        ListFormat::Json => {
            let mut b = serde_json::to_vec_pretty(&serde_json::json!({ "aspects": listings }))?;
            b.push(b'\n');
            b
        }
        ListFormat::Table => output::aspects_table(
            output::terminal_width(),
            &listings
                .iter()
                .map(|l| {
                    (
                        &l.info,
                        l.label_prompts
                            .as_ref()
                            .map(|p| p.iter().map(|x| x.label.as_str()).collect::<Vec<_>>()),
                    )
                })
                .collect::<Vec<_>>(),
        )
        .into_bytes(),
    };
    out.write_all(&bytes)?;
    out.flush()?;
    Ok(Outcome::Success)
}
