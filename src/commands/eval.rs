//! `vlm eval`: zero-shot accuracy on a labelled folder (the ImageFolder layout: one sub-folder per
//! class), as CLIP_benchmark measures it: top-1, top-5, mean per-class recall, and each class's
//! recall and most frequent confusions. `--sweep` scores each template alone as well.
//!
//! - Classes are the root's sub-folders (hidden ones skipped), sorted by name as bytes (Python's
//!   `sorted`, which torchvision's `ImageFolder` uses); each class's images are found as
//!   `classify --recursive` finds them (image extensions, no hidden files, nested folders walked).
//! - A class folder without images is still a label (the model may predict it), but it has no
//!   recall (null) and is left out of the mean per-class recall; a warning says so.
//! - Images are ranked by cosine, which orders labels as the probabilities do (the head is
//!   monotonic); ties go to the label that comes first, as in `classify`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::{display_path, show_progress, Outcome, RunOptions};
use crate::engine::images::encode_images;
use crate::engine::text::{
    load_with_text, prompt_units, templates_or_default, text_cache, TextReport,
};
use crate::engine::{plan_model, ModelOptions};
use crate::evaluation::metrics::Tally;
use crate::inputs::{self, Input, InputOptions};
use crate::output::{
    self, write_report, Confusion, EvalClass, EvalInfo, FailedInput, Progress, Sink, SweepRow,
};
use crate::score::{self, normalize};
use crate::text::templates_from;
use crate::Error;

/// How many confusions a class lists.
const CONFUSIONS: usize = 3;

/// Everything `vlm eval` needs.
#[derive(Debug, Clone)]
pub(crate) struct EvalOptions {
    /// The dataset folder: one sub-folder per class.
    pub root: PathBuf,
    /// One label per line, in sorted folder order.
    pub labels_file: Option<PathBuf>,
    /// `folder=label` lines.
    pub label_map: Option<PathBuf>,
    pub templates: Vec<String>,
    pub template_set: Option<String>,
    /// Also score each template alone.
    pub sweep: bool,
    /// Include hidden class folders and files.
    pub hidden: bool,
    pub model: ModelOptions,
    pub run: RunOptions,
}

/// A class: its folder and its label.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Class {
    pub folder: PathBuf,
    /// The folder's name (lossy UTF-8), as mapping files name it.
    pub name: String,
    pub label: String,
}

/// The class folders of `root`, sorted by name as bytes, and how many files lie beside them.
fn class_folders(root: &Path, hidden: bool) -> Result<(Vec<(String, PathBuf)>, usize)> {
    let entries = std::fs::read_dir(root).with_context(|| {
        format!(
            "{}: cannot read the dataset folder (eval takes a folder with one sub-folder per class)",
            root.display()
        )
    })?;
    let mut folders = Vec::new();
    let mut files = 0usize;
    for entry in entries {
        let entry =
            entry.with_context(|| format!("{}: cannot read folder entry", root.display()))?;
        let name = entry.file_name();
        if !hidden && name.as_encoded_bytes().first() == Some(&b'.') {
            continue;
        }
        let path = entry.path();
        if std::fs::metadata(&path).is_ok_and(|m| m.is_dir()) {
            folders.push((name, path));
        } else {
            files += 1;
        }
    }
    folders.sort_by(|a, b| a.0.as_encoded_bytes().cmp(b.0.as_encoded_bytes()));
    Ok((
        folders
            .into_iter()
            .map(|(n, p)| (n.to_string_lossy().into_owned(), p))
            .collect(),
        files,
    ))
}

/// Labels from a `--labels-file`: one per line (`#` comments and blank lines skipped), in sorted
/// folder order; the count must match. Repeats are allowed, as in OpenAI's ImageNet class names
/// ("missile" and "sunglasses" name two classes each): such classes get the same prompts, and
/// ties go to the first.
pub(crate) fn labels_from_list(
    folders: &[String],
    text: &str,
    source: &str,
) -> Result<Vec<String>> {
    let labels: Vec<String> = crate::text::list_lines(text)
        .map(|(_, l)| l.to_string())
        .collect();
    if labels.len() != folders.len() {
        return Err(Error::Usage(format!(
            "{source}: {} labels for {} class folders (one label per line, in sorted folder order: {} ...)",
            labels.len(),
            folders.len(),
            folders.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
        ))
        .into());
    }
    Ok(labels)
}

/// Labels from a `--label-map`: `folder=label` lines (`#` comments and blank lines skipped). Every
/// class folder needs a line, and every line a class folder.
pub(crate) fn labels_from_map(folders: &[String], text: &str, source: &str) -> Result<Vec<String>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut map: Vec<(String, String, usize)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((folder, label)) = line.split_once('=') else {
            return Err(Error::Usage(format!(
                "{source}, line {n}: expected folder=label, got {line:?}"
            ))
            .into());
        };
        let (folder, label) = (folder.trim(), label.trim());
        if folder.is_empty() || label.is_empty() {
            return Err(Error::Usage(format!(
                "{source}, line {n}: expected folder=label, got {line:?}"
            ))
            .into());
        }
        if !folders.iter().any(|f| f == folder) {
            return Err(Error::Usage(format!(
                "{source}, line {n}: no class folder {folder:?} in the dataset"
            ))
            .into());
        }
        if let Some((_, _, first)) = map.iter().find(|(f, _, _)| f == folder) {
            return Err(Error::Usage(format!(
                "{source}, line {n}: folder {folder:?} is mapped twice (first on line {first})"
            ))
            .into());
        }
        map.push((folder.to_string(), label.to_string(), n));
    }
    folders
        .iter()
        .map(|f| {
            map.iter()
                .find(|(m, _, _)| m == f)
                .map(|(_, l, _)| l.clone())
                .ok_or_else(|| {
                    Error::Usage(format!(
                        "{source}: no label for class folder {f:?} (every class folder needs a folder=label line)"
                    ))
                    .into()
                })
        })
        .collect()
}

/// The classes of `root`, with their labels.
pub(crate) fn classes(opts: &EvalOptions) -> Result<(Vec<Class>, usize)> {
    let (folders, stray) = class_folders(&opts.root, opts.hidden)?;
    let names: Vec<String> = folders.iter().map(|(n, _)| n.clone()).collect();
    if names.len() < 2 {
        return Err(Error::Usage(format!(
            "{}: {} class folder(s); eval needs a folder with one sub-folder per class, at least two",
            opts.root.display(),
            names.len()
        ))
        .into());
    }
    let labels = match (&opts.labels_file, &opts.label_map) {
        (Some(file), _) => labels_from_list(
            &names,
            &crate::text::read_text_file(file)?,
            &file.display().to_string(),
        )?,
        (None, Some(file)) => labels_from_map(
            &names,
            &crate::text::read_text_file(file)?,
            &file.display().to_string(),
        )?,
        (None, None) => names.clone(),
    };
    let classes = folders
        .into_iter()
        .zip(labels)
        .map(|((name, folder), label)| Class {
            folder,
            name,
            label,
        })
        .collect();
    Ok((classes, stray))
}

/// The images of a dataset, each with its class index, in class order.
type ClassImages = Vec<(Input, usize)>;

/// What [`class_images`] found.
struct Dataset {
    /// Every image of every class, in class order, with its class.
    images: ClassImages,
    /// The classes without images.
    empty: Vec<usize>,
    /// Files reached through more than one class folder (symlinked folders, hard links): each
    /// counts once, in the first class that has it, as classify counts a file given twice.
    duplicates: usize,
    /// The first such file: its path in the later class, and in the class that keeps it.
    duplicate_example: Option<(PathBuf, PathBuf)>,
}

/// Every image of every class, each file once (by identity, [`inputs::FileId`]).
fn class_images(classes: &[Class], hidden: bool) -> Result<Dataset> {
    let walk = InputOptions {
        recursive: true,
        hidden,
        ..InputOptions::default()
    };
    let mut out = Dataset {
        images: Vec::new(),
        empty: Vec::new(),
        duplicates: 0,
        duplicate_example: None,
    };
    let mut first: std::collections::HashMap<inputs::FileId, PathBuf> = Default::default();
    for (c, class) in classes.iter().enumerate() {
        let found = inputs::collect(
            std::slice::from_ref(&class.folder),
            &walk,
            &mut std::io::empty(),
        )?;
        let is_empty = matches!(found.as_slice(), [only] if only.path == class.folder
            && only.error.as_deref().is_some_and(|e| e.contains(inputs::NO_IMAGES)));
        if is_empty {
            out.empty.push(c);
            continue;
        }
        for input in found {
            let id = input
                .error
                .is_none()
                .then(|| inputs::FileId::of_path(&input.path))
                .flatten();
            if let Some(id) = id {
                if let Some(kept) = first.get(&id) {
                    out.duplicates += 1;
                    out.duplicate_example
                        .get_or_insert_with(|| (input.path.clone(), kept.clone()));
                    continue;
                }
                first.insert(id, input.path.clone());
            }
            out.images.push((input, c));
        }
    }
    Ok(out)
}

/// Ranks best first: top-1, then mean per-class recall, then top-5; `None` last.
fn sweep_order(a: &SweepRow, b: &SweepRow) -> std::cmp::Ordering {
    let key = |r: &SweepRow| {
        [r.top1, r.mean_per_class_recall, r.top5].map(|x| x.unwrap_or(f64::NEG_INFINITY))
    };
    let (ka, kb) = (key(a), key(b));
    kb.iter()
        .zip(&ka)
        .map(|(x, y)| x.total_cmp(y))
        .find(|o| o.is_ne())
        .unwrap_or(std::cmp::Ordering::Equal)
}

pub(crate) fn run(opts: &EvalOptions) -> Result<Outcome> {
    let quiet = opts.run.quiet;
    if opts.run.output.resume {
        return Err(
            Error::Usage("--resume: eval writes one report; nothing to resume".into()).into(),
        );
    }
    let templates = templates_from(&opts.templates, opts.template_set.as_deref())?;
    let (classes, stray) = classes(opts)?;
    let Dataset {
        images,
        empty,
        duplicates,
        duplicate_example,
    } = class_images(&classes, opts.hidden)?;
    // Nothing to score is a usage error before the model loads (issue 23).
    if images.is_empty() {
        return Err(Error::Usage(format!(
            "{}: no images in any class folder",
            opts.root.display()
        ))
        .into());
    }
    let inputs: Vec<Input> = images.iter().map(|(i, _)| i.clone()).collect();
    super::require_usable(&inputs)?;
    let format = super::format_for(&opts.run.output);
    let sink = Sink::open(
        opts.run.output.output.as_deref(),
        format,
        output::Existing::of(opts.run.output.force, false, false),
    )?;
    let plan = plan_model(&opts.model, quiet)?;
    let templates = templates_or_default(&plan, templates)?;
    if !quiet {
        if stray > 0 {
            output::warn(&format!(
                "{}: {stray} file(s) beside the class folders are not in a class, and are left out",
                opts.root.display()
            ));
        }
        if let Some((again, kept)) = &duplicate_example {
            output::warn(&format!(
                "{duplicates} file(s) are in more than one class folder (e.g. {} is {}): each is counted once, in its first class",
                again.display(),
                kept.display()
            ));
        }
        for &c in &empty {
            output::warn(&format!(
                "{}: no images; {:?} is still a label, but has no recall and is left out of the mean per-class recall",
                classes[c].folder.display(),
                classes[c].label
            ));
        }
        let mut seen: Vec<&str> = Vec::new();
        for c in &classes {
            if seen.contains(&c.label.as_str()) {
                output::warn(&format!(
                    "label {:?} names two classes: they get the same prompts, and ties go to the first",
                    c.label
                ));
            } else {
                seen.push(&c.label);
            }
        }
        if classes.len() < 5 {
            output::warn(&format!(
                "{} classes: top5 is top-{} (every class), so it is 1 for every image scored",
                classes.len(),
                classes.len()
            ));
        }
    }
    let labels: Vec<String> = classes.iter().map(|c| c.label.clone()).collect();
    // With --sweep, one text unit per label and template (each template's own embedding; the
    // ensemble is their normalised mean); otherwise one per label, as classify encodes them.
    // (With one template, the sweep is that template's row alone.)
    let sweep = opts.sweep && templates.len() > 1;
    let units: Vec<Vec<String>> = if sweep {
        labels
            .iter()
            .flat_map(|l| templates.iter().map(move |t| vec![t.fill(l)]))
            .collect()
    } else {
        prompt_units(&labels, &templates)
    };
    let cache = text_cache(opts.run.no_cache);
    let report = TextReport {
        quiet,
        verbose: opts.run.verbose,
    };
    let (engine, embeds) = load_with_text(plan, &units, cache.as_ref(), report)?;
    // The variants scored: the ensemble of all templates first, then each template alone.
    let mut variants: Vec<Vec<Vec<f32>>> = Vec::new();
    if sweep {
        let t = templates.len();
        variants.push(
            embeds
                .chunks(t)
                .map(|per| score::ensemble(per.iter().map(Vec::as_slice)))
                .collect(),
        );
        for j in 0..t {
            variants.push(embeds.chunks(t).map(|per| per[j].clone()).collect());
        }
    } else {
        variants.push(embeds);
    }
    let mut tallies: Vec<Tally> = (0..variants.len())
        .map(|v| Tally::new(classes.len(), v == 0))
        .collect();

    let truth: Vec<usize> = images.iter().map(|(_, c)| *c).collect();
    let mut failed: Vec<FailedInput> = Vec::new();
    let progress = Progress::images(inputs.len(), show_progress(quiet)).with_errors(true);
    encode_images(
        &engine,
        &inputs,
        &opts.run.batch,
        &progress,
        |i, input, embedding| {
            let class = truth.get(i).copied().context("an image without a class")?;
            match embedding {
                Ok(mut e) => {
                    normalize(&mut e);
                    for (tally, label_embeds) in tallies.iter_mut().zip(&variants) {
                        let cosines: Vec<f32> =
                            label_embeds.iter().map(|t| score::dot(t, &e)).collect();
                        tally.add(class, &cosines);
                    }
                }
                Err(message) => failed.push(FailedInput {
                    path: display_path(&input.path),
                    error: message,
                }),
            }
            Ok(())
        },
    )?;
    progress.finish();

    let main = &tallies[0];
    let summary = main.summary();
    let sweep_rows = opts.sweep.then(|| {
        let mut rows: Vec<SweepRow> = tallies
            .iter()
            .enumerate()
            .map(|(v, t)| {
                let s = t.summary();
                SweepRow {
                    template: if v == 0 && sweep {
                        "ensemble".into()
                    } else if v == 0 {
                        templates[0].as_str().to_string()
                    } else {
                        templates[v - 1].as_str().to_string()
                    },
                    top1: s.top1,
                    top5: s.top5,
                    mean_per_class_recall: s.mean_per_class_recall,
                }
            })
            .collect();
        // Stable: equal rows keep the ensemble first, then the templates in order.
        rows.sort_by(sweep_order);
        rows
    });
    let header = EvalInfo {
        model: engine.info(),
        root: display_path(&opts.root),
        templates: templates.iter().map(|t| t.as_str().to_string()).collect(),
        top1: summary.top1,
        top5: summary.top5,
        top5_k: main.k,
        mean_per_class_recall: summary.mean_per_class_recall,
        images: summary.images,
        failed,
        sweep: sweep_rows,
    };
    let records: Vec<EvalClass> = classes
        .iter()
        .enumerate()
        .map(|(c, class)| EvalClass {
            label: class.label.clone(),
            images: main.images[c],
            recall: main.recall(c),
            top_confusions: main
                .top_confusions(c, CONFUSIONS)
                .into_iter()
                .map(|(p, n)| Confusion {
                    label: classes[p].label.clone(),
                    images: n,
                })
                .collect(),
        })
        .collect();
    let some_failed = !header.failed.is_empty();
    write_report(sink, format, &header, &records)?;
    Ok(if some_failed {
        Outcome::SomeFailed
    } else {
        Outcome::Success
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_label_list_must_match_the_folders() {
        let folders = names(&["n01", "n02", "n03"]);
        let got = labels_from_list(
            &folders,
            "tench\ngoldfish\n# comment\n\nwhite shark\n",
            "c.txt",
        )
        .unwrap();
        assert_eq!(got, ["tench", "goldfish", "white shark"]);
        let e = labels_from_list(&folders, "tench\ngoldfish\n", "c.txt")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "c.txt: 2 labels for 3 class folders (one label per line, in sorted folder order: n01, n02, n03 ...)"
        );
        // OpenAI's ImageNet names repeat two labels; that is allowed.
        let got = labels_from_list(&folders, "missile\nb\r\nmissile\n", "c.txt").unwrap();
        assert_eq!(got, ["missile", "b", "missile"]);
    }

    #[test]
    fn a_label_map_names_every_folder_once() {
        let folders = names(&["cat", "dog"]);
        let got =
            labels_from_map(&folders, "\u{feff}dog = a dog\n# c\ncat=a cat\n", "m.txt").unwrap();
        assert_eq!(got, ["a cat", "a dog"]);
        let e = |t: &str| {
            labels_from_map(&folders, t, "m.txt")
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            e("cat=kitty\nbird=tweety\n"),
            "m.txt, line 2: no class folder \"bird\" in the dataset"
        );
        assert_eq!(
            e("cat=kitty\n"),
            "m.txt: no label for class folder \"dog\" (every class folder needs a folder=label line)"
        );
        assert_eq!(
            e("cat=kitty\ncat=tom\n"),
            "m.txt, line 2: folder \"cat\" is mapped twice (first on line 1)"
        );
        assert_eq!(
            labels_from_map(&folders, "cat=pet\ndog=pet\n", "m.txt").unwrap(),
            ["pet", "pet"]
        );
        assert_eq!(
            e("cat\n"),
            "m.txt, line 1: expected folder=label, got \"cat\""
        );
    }

    #[test]
    fn sweep_rows_sort_best_first() {
        let row = |t: &str, top1: Option<f64>, mpcr: Option<f64>| SweepRow {
            template: t.into(),
            top1,
            top5: Some(1.0),
            mean_per_class_recall: mpcr,
        };
        let mut rows = [
            row("a", Some(0.5), Some(0.4)),
            row("b", None, None),
            row("c", Some(0.5), Some(0.6)),
            row("d", Some(0.7), Some(0.1)),
        ];
        rows.sort_by(sweep_order);
        let order: Vec<&str> = rows.iter().map(|r| r.template.as_str()).collect();
        assert_eq!(order, ["d", "c", "a", "b"]);
    }
}
