//! Aspects: named label sets that `vlm tag` scores an image against, one TOML file each.
//!
//! An aspect is either `single` (one answer: softmax over its labels, e.g. the scene) or `multi`
//! (any number of answers: each label against a neutral prompt, e.g. the objects present). The
//! built-in aspects live under `prompts/aspects/` and are compiled in; users can add their own files.
//! Every error names the file and, where it can, the line, on one line: `vehicle.toml:7: label "car"
//! appears twice`.

use std::fmt;
use std::ops::Range;
use std::path::Path;

use anyhow::Result;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::error::single_line;
use crate::text::{self, Template};
use crate::Error;

/// The built-in aspects, in the order `all` expands to (and output lists them).
pub(crate) const BUILTIN_NAMES: [&str; 8] = [
    "color",
    "scene",
    "object",
    "medium",
    "lighting",
    "time_of_day",
    "weather",
    "mood",
];

/// The built-in aspect files, in `BUILTIN_NAMES` order.
const BUILTIN_FILES: [(&str, &str); 8] = [
    ("color", include_str!("../../prompts/aspects/color.toml")),
    ("scene", include_str!("../../prompts/aspects/scene.toml")),
    ("object", include_str!("../../prompts/aspects/object.toml")),
    ("medium", include_str!("../../prompts/aspects/medium.toml")),
    (
        "lighting",
        include_str!("../../prompts/aspects/lighting.toml"),
    ),
    (
        "time_of_day",
        include_str!("../../prompts/aspects/time_of_day.toml"),
    ),
    (
        "weather",
        include_str!("../../prompts/aspects/weather.toml"),
    ),
    ("mood", include_str!("../../prompts/aspects/mood.toml")),
];

/// What the `source` of a built-in aspect says.
pub(crate) const BUILTIN_SOURCE: &str = "built-in";

/// Longest label name, in characters: labels are shown in tables and used as JSON values.
pub const MAX_LABEL_CHARS: usize = 100;

/// How an aspect's labels are scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AspectKind {
    /// Exactly one label applies: softmax over all labels.
    Single,
    /// Any number of labels apply: each label is scored against the neutral prompt.
    Multi,
}

impl fmt::Display for AspectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AspectKind::Single => "single",
            AspectKind::Multi => "multi",
        })
    }
}

/// One label of an aspect (or its neutral): a name, optionally its own full-sentence prompts that
/// replace the aspect's templates, and optionally its own threshold (`vlm calibrate` writes them),
/// which replaces the aspect's for this label.
#[derive(Debug, Clone, PartialEq)]
pub struct AspectLabel {
    pub name: String,
    pub prompts: Option<Vec<String>>,
    /// In 0..=1; never set on the neutral.
    pub threshold: Option<f32>,
}

/// A parsed and validated aspect file.
#[derive(Debug, Clone, PartialEq)]
pub struct Aspect {
    pub name: String,
    pub description: String,
    pub kind: AspectKind,
    pub templates: Vec<Template>,
    pub labels: Vec<AspectLabel>,
    /// Always `Some` for `multi`, always `None` for `single`.
    pub neutral: Option<AspectLabel>,
    pub top_k: Option<usize>,
    pub threshold: Option<f32>,
    /// `"built-in"` or the file path as given.
    pub source: String,
}

/// Why an aspect file was refused: one line, `source:line: message` (`source: message` when no line
/// applies).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AspectError {
    pub source: String,
    /// 1-based.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for AspectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.source, self.message),
            None => write!(f, "{}: {}", self.source, self.message),
        }
    }
}

// Written by hand rather than with thiserror: thiserror treats a field called `source` as the
// underlying error, and here it is the file name.
impl std::error::Error for AspectError {}

/// The file as written, with spans for line numbers in validation errors.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAspect {
    name: Spanned<String>,
    description: Spanned<String>,
    kind: Spanned<AspectKind>,
    templates: Spanned<Vec<Spanned<String>>>,
    // Signed and wide so that `top_k = 0` or `-1` get our message rather than serde's.
    top_k: Option<Spanned<i64>>,
    threshold: Option<Spanned<f64>>,
    neutral: Option<Spanned<RawLabel>>,
    labels: Spanned<Vec<Spanned<RawLabel>>>,
}

/// A label as written: a bare string, or a table with its own prompts.
enum RawLabel {
    Name(String),
    Table(RawLabelTable),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLabelTable {
    name: String,
    prompts: Option<Spanned<Vec<Spanned<String>>>>,
    threshold: Option<Spanned<f64>>,
}

// By hand rather than `#[serde(untagged)]`: untagged enums buffer their input, which loses both the
// spans and the precise error (an unknown key in a label table would read "did not match any variant").
impl<'de> Deserialize<'de> for RawLabel {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LabelVisitor;

        impl<'de> Visitor<'de> for LabelVisitor {
            type Value = RawLabel;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a label name or a table { name = \"...\", prompts = [\"...\"], threshold = 0.5 }",
                )
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawLabel, E> {
                Ok(RawLabel::Name(v.to_string()))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawLabel, A::Error> {
                RawLabelTable::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawLabel::Table)
            }
        }

        deserializer.deserialize_any(LabelVisitor)
    }
}

/// 1-based line of a byte offset into `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Builds errors for one file.
struct Reporter<'a> {
    text: &'a str,
    source: &'a str,
}

impl Reporter<'_> {
    fn at(&self, span: Option<Range<usize>>, message: impl Into<String>) -> AspectError {
        AspectError {
            source: self.source.to_string(),
            line: span.map(|s| line_of(self.text, s.start)),
            message: message.into(),
        }
    }

    fn line(&self, span: &Range<usize>) -> usize {
        line_of(self.text, span.start)
    }
}

impl Aspect {
    /// Parses and validates an aspect file's text; `source` names it in errors and becomes
    /// `Aspect::source`.
    pub fn parse(text: &str, source: &str) -> Result<Aspect, AspectError> {
        Self::parse_named(text, source, None)
    }

    /// `parse`, and when `stem` is given the aspect's name must equal it (built-in files).
    fn parse_named(text: &str, source: &str, stem: Option<&str>) -> Result<Aspect, AspectError> {
        let r = Reporter { text, source };
        let raw: RawAspect = toml::from_str(text).map_err(|e| {
            // A key missing from the top level comes with the whole document as its span; line 1
            // would point at nothing in particular.
            let span = e
                .span()
                .filter(|s| !(s.start == 0 && s.end >= text.trim_end().len()));
            r.at(span, single_line(e.message()))
        })?;

        let name = raw.name.get_ref().as_str();
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(r.at(
                Some(raw.name.span()),
                format!("aspect name {name:?} must be lowercase letters, digits and _"),
            ));
        }
        if let Some(stem) = stem.filter(|s| *s != name) {
            return Err(r.at(
                Some(raw.name.span()),
                format!("name {name:?} must equal the file stem {stem:?}"),
            ));
        }

        let description = raw.description.get_ref().trim();
        if description.is_empty() {
            return Err(r.at(Some(raw.description.span()), "description is empty"));
        }
        // `vlm aspects` prints it as one line of a table; a tab or an escape sequence would break it.
        if description.chars().any(char::is_control) {
            return Err(r.at(
                Some(raw.description.span()),
                "description must be one line, without control characters",
            ));
        }

        let templates = parse_templates(&r, &raw.templates)?;

        let top_k = match &raw.top_k {
            None => None,
            Some(k) => match usize::try_from(*k.get_ref()) {
                Ok(v) if v >= 1 => Some(v),
                _ => {
                    return Err(r.at(
                        Some(k.span()),
                        format!("top_k must be at least 1, not {}", k.get_ref()),
                    ))
                }
            },
        };

        let threshold = match &raw.threshold {
            None => None,
            Some(t) => Some(parse_threshold(&r, t, "threshold")?),
        };

        let kind = *raw.kind.get_ref();
        let labels = parse_labels(&r, &raw.labels)?;
        let neutral = match (&raw.neutral, kind) {
            (Some(n), AspectKind::Single) => {
                return Err(r.at(
                    Some(n.span()),
                    "neutral is only for kind = \"multi\"; a single aspect compares its labels with each other",
                ))
            }
            (None, AspectKind::Multi) => {
                return Err(r.at(
                    Some(raw.kind.span()),
                    "kind = \"multi\" needs a neutral = \"...\" to score each label against",
                ))
            }
            (None, AspectKind::Single) => None,
            (Some(n), AspectKind::Multi) => {
                let neutral = parse_label(&r, n, "neutral")?;
                if let Some(same) = labels
                    .iter()
                    .find(|l| l.name.to_lowercase() == neutral.name.to_lowercase())
                {
                    return Err(r.at(
                        Some(n.span()),
                        format!("neutral {:?} is also a label", same.name),
                    ));
                }
                Some(neutral)
            }
        };

        Ok(Aspect {
            name: name.to_string(),
            description: description.to_string(),
            kind,
            templates,
            labels,
            neutral,
            top_k,
            threshold,
            source: source.to_string(),
        })
    }

    /// Reads and parses a user's aspect file; its name need not match the file name.
    pub fn from_file(path: &Path) -> Result<Aspect> {
        let text = text::read_text_file(path)?;
        Ok(Aspect::parse(&text, &path.display().to_string())?)
    }

    /// The prompts for one label (or the neutral): its own prompts, or every template filled with
    /// its name.
    pub fn prompts_for(&self, label: &AspectLabel) -> Vec<String> {
        match &label.prompts {
            Some(prompts) => prompts.clone(),
            None => self.templates.iter().map(|t| t.fill(&label.name)).collect(),
        }
    }

    /// A stable text that identifies this aspect's templates (one per line), for cache keys.
    pub fn templates_key(&self) -> String {
        self.templates
            .iter()
            .map(Template::as_str)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The aspect as an aspect file: `comment` (each line prefixed with `# `) then every key, labels
    /// with their own prompts or threshold as tables. Parsing the text gives this aspect back.
    pub(crate) fn to_toml(&self, comment: &str) -> String {
        let s = |text: &str| toml::Value::String(text.to_string()).to_string();
        let list = |items: &[String]| {
            let items: Vec<String> = items.iter().map(|i| s(i)).collect();
            format!("[{}]", items.join(", "))
        };
        let label = |l: &AspectLabel| {
            if l.prompts.is_none() && l.threshold.is_none() {
                return s(&l.name);
            }
            let mut parts = vec![format!("name = {}", s(&l.name))];
            if let Some(p) = &l.prompts {
                parts.push(format!("prompts = {}", list(p)));
            }
            if let Some(t) = l.threshold {
                parts.push(format!("threshold = {}", toml_threshold(t)));
            }
            format!("{{ {} }}", parts.join(", "))
        };
        let mut out = String::new();
        for line in comment.lines() {
            out.push_str(
                &format!("# {}\n", crate::error::escape_controls(line)).replace("# \n", "#\n"),
            );
        }
        out.push_str(&format!("name = {}\n", s(&self.name)));
        out.push_str(&format!("description = {}\n", s(&self.description)));
        out.push_str(&format!("kind = {}\n", s(&self.kind.to_string())));
        let templates: Vec<String> = self
            .templates
            .iter()
            .map(|t| t.as_str().to_string())
            .collect();
        out.push_str(&format!("templates = {}\n", list(&templates)));
        if let Some(n) = &self.neutral {
            out.push_str(&format!("neutral = {}\n", label(n)));
        }
        if let Some(t) = self.threshold {
            out.push_str(&format!("threshold = {}\n", toml_threshold(t)));
        }
        if let Some(k) = self.top_k {
            out.push_str(&format!("top_k = {k}\n"));
        }
        out.push_str("labels = [\n");
        for l in &self.labels {
            out.push_str(&format!("  {},\n", label(l)));
        }
        out.push_str("]\n");
        out
    }

    /// True when both define the same thing, wherever they came from.
    fn same_definition(&self, other: &Aspect) -> bool {
        Aspect {
            source: other.source.clone(),
            ..self.clone()
        } == *other
    }
}

fn parse_templates(
    r: &Reporter<'_>,
    raw: &Spanned<Vec<Spanned<String>>>,
) -> Result<Vec<Template>, AspectError> {
    if raw.get_ref().is_empty() {
        return Err(r.at(Some(raw.span()), "templates is empty"));
    }
    let mut out: Vec<(Template, usize)> = Vec::new();
    for t in raw.get_ref() {
        let text = t.get_ref().as_str();
        // Template::new checks for blanks and a missing {}; its message is already one line.
        let template = Template::new(text).map_err(|e| r.at(Some(t.span()), e.to_string()))?;
        // A second {} would put the label into the sentence twice.
        if text.matches("{}").count() > 1 {
            return Err(r.at(
                Some(t.span()),
                format!("template {text:?} has more than one {{}}"),
            ));
        }
        if let Some((_, first)) = out.iter().find(|(o, _)| *o == template) {
            return Err(r.at(
                Some(t.span()),
                format!("template {text:?} appears twice (first on line {first})"),
            ));
        }
        out.push((template, r.line(&t.span())));
    }
    Ok(out.into_iter().map(|(t, _)| t).collect())
}

fn parse_labels(
    r: &Reporter<'_>,
    raw: &Spanned<Vec<Spanned<RawLabel>>>,
) -> Result<Vec<AspectLabel>, AspectError> {
    if raw.get_ref().is_empty() {
        return Err(r.at(Some(raw.span()), "labels is empty"));
    }
    // Lowercased name -> line, to catch "Car" after "car": they would split one answer in two.
    let mut seen: std::collections::HashMap<String, usize> = Default::default();
    let mut out = Vec::with_capacity(raw.get_ref().len());
    for l in raw.get_ref() {
        let label = parse_label(r, l, "label")?;
        let line = r.line(&l.span());
        if let Some(first) = seen.insert(label.name.to_lowercase(), line) {
            return Err(r.at(
                Some(l.span()),
                format!(
                    "label {:?} appears twice (first on line {first})",
                    label.name
                ),
            ));
        }
        out.push(label);
    }
    Ok(out)
}

/// Validates one label or the neutral; `what` names it in messages.
fn parse_label(
    r: &Reporter<'_>,
    raw: &Spanned<RawLabel>,
    what: &str,
) -> Result<AspectLabel, AspectError> {
    let span = Some(raw.span());
    let (name, prompts, threshold) = match raw.get_ref() {
        RawLabel::Name(name) => (name.as_str(), None, None),
        RawLabel::Table(t) => (t.name.as_str(), t.prompts.as_ref(), t.threshold.as_ref()),
    };
    let name = name.trim();
    if name.is_empty() {
        return Err(r.at(span, format!("{what} name is empty")));
    }
    if name.chars().count() > MAX_LABEL_CHARS {
        return Err(r.at(
            span,
            format!(
                "{what} {} is longer than {MAX_LABEL_CHARS} characters",
                crate::error::quote(name)
            ),
        ));
    }
    // Names are printed in tables and CSV rows; a newline or tab there would break them.
    if name.chars().any(char::is_control) {
        return Err(r.at(
            span,
            format!(
                "{what} {} contains a control character",
                crate::error::quote(name)
            ),
        ));
    }
    let prompts = match prompts {
        None => None,
        Some(list) => {
            if list.get_ref().is_empty() {
                return Err(r.at(
                    Some(list.span()),
                    format!("{what} {name:?} has an empty prompts list"),
                ));
            }
            let mut out: Vec<String> = Vec::with_capacity(list.get_ref().len());
            for p in list.get_ref() {
                let prompt = p.get_ref().trim();
                if prompt.is_empty() {
                    return Err(r.at(
                        Some(p.span()),
                        format!("{what} {name:?} has an empty prompt"),
                    ));
                }
                // A label's own prompts are full sentences; a {} means the author expected a template.
                if prompt.contains("{}") {
                    return Err(r.at(
                        Some(p.span()),
                        format!(
                            "prompt {prompt:?} of {what} {name:?} contains {{}}; a label's own prompts are full sentences"
                        ),
                    ));
                }
                if out.iter().any(|o| o == prompt) {
                    return Err(r.at(
                        Some(p.span()),
                        format!("prompt {prompt:?} of {what} {name:?} appears twice"),
                    ));
                }
                out.push(prompt.to_string());
            }
            Some(out)
        }
    };
    let threshold = match threshold {
        None => None,
        Some(_) if what == "neutral" => {
            return Err(r.at(
                span,
                "the neutral has no threshold; thresholds are for labels",
            ))
        }
        Some(t) => Some(parse_threshold(
            r,
            t,
            &format!("threshold of {what} {name:?}"),
        )?),
    };
    Ok(AspectLabel {
        name: name.to_string(),
        prompts,
        threshold,
    })
}

/// A threshold as written: a number in 0..=1.
fn parse_threshold(r: &Reporter<'_>, t: &Spanned<f64>, what: &str) -> Result<f32, AspectError> {
    let v = *t.get_ref();
    if !(0.0..=1.0).contains(&v) {
        return Err(r.at(
            Some(t.span()),
            format!("{what} must be between 0 and 1, not {v}"),
        ));
    }
    Ok(v as f32)
}

/// A threshold as TOML: the f32's exact value as a double, so that reading the file back (as f64,
/// then f32) gives the same f32; short decimals stay short (0.5, 0.25).
fn toml_threshold(t: f32) -> String {
    let shortest = format!("{t}");
    match shortest.parse::<f64>() {
        Ok(v) if v as f32 == t => format!("{v:?}"),
        _ => format!("{:?}", f64::from(t)),
    }
}

/// Parses one built-in file: like a user file, plus its name must be its file stem.
fn parse_builtin(stem: &str, text: &str) -> Result<Aspect, AspectError> {
    let path = format!("prompts/aspects/{stem}.toml");
    let mut aspect = Aspect::parse_named(text, &path, Some(stem))?;
    aspect.source = BUILTIN_SOURCE.to_string();
    Ok(aspect)
}

/// Every built-in aspect, in `BUILTIN_NAMES` order.
pub(crate) fn builtins() -> Vec<Aspect> {
    BUILTIN_FILES
        .iter()
        .map(|(stem, text)| builtin_or_panic(stem, text))
        .collect()
}

/// The built-in aspect called `name`, if there is one.
pub(crate) fn builtin(name: &str) -> Option<Aspect> {
    BUILTIN_FILES
        .iter()
        .find(|(stem, _)| *stem == name)
        .map(|(stem, text)| builtin_or_panic(stem, text))
}

#[allow(clippy::panic)]
fn builtin_or_panic(stem: &str, text: &str) -> Aspect {
    // The built-in files are compiled in, not user input, and the unit test
    // `every_builtin_parses_and_is_big_enough` parses each one: a failure here is a defect of the
    // build itself, caught by `cargo test` before any release.
    match parse_builtin(stem, text) {
        Ok(aspect) => aspect,
        Err(e) => panic!("built-in aspect is invalid: {e}"),
    }
}

/// Resolves `--aspects` values, each possibly comma-separated: built-in names, `all` (every built-in)
/// and paths of aspect files (anything containing a path separator or ending in `.toml`). Keeps the
/// first occurrence's order; naming the same aspect twice is fine, two different aspects with one
/// name are an error. No values give no aspects (the caller picks the default).
pub(crate) fn resolve(specs: &[String]) -> Result<Vec<Aspect>> {
    let mut out: Vec<Aspect> = Vec::new();
    for spec in specs {
        for (i, part) in spec.split(',').enumerate() {
            let part = part.trim();
            if part.is_empty() {
                anyhow::bail!(Error::Usage(format!(
                    "--aspects {spec:?}: aspect {} is empty",
                    i + 1
                )));
            }
            let found = if part == "all" {
                builtins()
            } else if part.contains('/') || part.contains('\\') || part.ends_with(".toml") {
                // Its errors name the file already.
                vec![Aspect::from_file(Path::new(part))?]
            } else {
                match builtin(part) {
                    Some(aspect) => vec![aspect],
                    None => anyhow::bail!(Error::Usage(format!(
                        "{part}: no such built-in aspect{} (built-ins: {}, or all); \
                         a file of your own must contain '/' or end in .toml",
                        crate::error::hint(part, &BUILTIN_NAMES),
                        BUILTIN_NAMES.join(", ")
                    ))),
                }
            };
            for aspect in found {
                match out.iter().find(|a| a.name == aspect.name) {
                    None => out.push(aspect),
                    Some(prev) if prev.same_definition(&aspect) => {}
                    Some(prev) => anyhow::bail!(Error::Usage(format!(
                        "--aspects: two different aspects are called {:?}: {} and {}",
                        aspect.name, prev.source, aspect.source
                    ))),
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"# Vehicles, for a test.
name = "vehicle"
description = "What kind of vehicle is shown."
kind = "multi"
templates = ["a photo of a {}.", "a blurry photo of a {}."]
top_k = 3
threshold = 0.25
neutral = { name = "thing", prompts = ["a photo.", "a picture of something."] }
labels = [
    "car",
    { name = "bike", prompts = ["a photo of a bicycle."] },
    "  red bus  ",
]
"#;

    fn err(text: &str) -> AspectError {
        Aspect::parse(text, "vehicle.toml").unwrap_err()
    }

    /// A valid single aspect with `line` replaced or extra lines added, for one fault at a time.
    fn single(extra: &str) -> String {
        format!(
            "name = \"scene\"\ndescription = \"Where.\"\nkind = \"single\"\ntemplates = [\"a photo of a {{}}.\"]\n{extra}labels = [\"kitchen\", \"beach\"]\n"
        )
    }

    #[test]
    fn every_builtin_parses_and_is_big_enough() {
        for (stem, text) in BUILTIN_FILES {
            if let Err(e) = parse_builtin(stem, text) {
                panic!("{e}");
            }
        }
        let all = builtins();
        let names: Vec<&str> = all.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, BUILTIN_NAMES);
        for a in &all {
            assert_eq!(a.source, BUILTIN_SOURCE);
            assert!(!a.description.is_empty(), "{}", a.name);
            assert_eq!(
                a.neutral.is_some(),
                a.kind == AspectKind::Multi,
                "{}",
                a.name
            );
            assert!(!a.labels.is_empty(), "{}", a.name);
        }
        let count = |n: &str| builtin(n).map(|a| a.labels.len()).unwrap_or(0);
        assert!(count("color") >= 20, "color: {}", count("color"));
        assert!(count("scene") >= 100, "scene: {}", count("scene"));
        assert!(count("object") >= 300, "object: {}", count("object"));
        assert!(builtin("no_such").is_none());
    }

    #[test]
    fn a_good_file_with_mixed_labels() {
        let a = Aspect::parse(GOOD, "vehicle.toml").unwrap();
        assert_eq!(a.name, "vehicle");
        assert_eq!(a.kind, AspectKind::Multi);
        assert_eq!(a.kind.to_string(), "multi");
        assert_eq!(a.top_k, Some(3));
        assert_eq!(a.threshold, Some(0.25));
        assert_eq!(a.source, "vehicle.toml");
        let names: Vec<&str> = a.labels.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["car", "bike", "red bus"]);
        assert_eq!(a.labels[0].prompts, None);
        assert_eq!(
            a.labels[1].prompts,
            Some(vec!["a photo of a bicycle.".to_string()])
        );
        let neutral = a.neutral.clone().unwrap();
        assert_eq!(neutral.name, "thing");
        assert_eq!(
            a.templates_key(),
            "a photo of a {}.\na blurry photo of a {}."
        );

        // Single, no optional keys, a string neutral would be refused but none is given.
        let s = Aspect::parse(&single(""), "scene.toml").unwrap();
        assert_eq!(s.kind, AspectKind::Single);
        assert_eq!((s.top_k, s.threshold, s.neutral), (None, None, None));
        // An integer threshold is fine; a string neutral on a multi aspect is a plain label.
        let m = Aspect::parse(
            &single("threshold = 1\n").replace("\"single\"", "\"multi\"\nneutral = \"place\""),
            "m.toml",
        )
        .unwrap();
        assert_eq!(m.threshold, Some(1.0));
        assert_eq!(
            m.neutral,
            Some(AspectLabel {
                name: "place".into(),
                prompts: None,
                threshold: None,
            })
        );
    }

    #[test]
    fn per_label_thresholds_parse_and_round_trip() {
        let text = GOOD
            .replace("\"car\",", "{ name = \"car\", threshold = 0.62 },")
            .replace(
                "prompts = [\"a photo of a bicycle.\"] }",
                "prompts = [\"a photo of a bicycle.\"], threshold = 1 }",
            );
        let a = Aspect::parse(&text, "vehicle.toml").unwrap();
        let thresholds: Vec<Option<f32>> = a.labels.iter().map(|l| l.threshold).collect();
        assert_eq!(thresholds, [Some(0.62), Some(1.0), None]);
        // Written out and read back: the same aspect, thresholds to the bit.
        let written = a.to_toml("calibrated\nfrom truth.csv");
        assert!(written.starts_with("# calibrated\n# from truth.csv\nname = \"vehicle\""));
        assert!(
            written.contains("{ name = \"car\", threshold = 0.62 }"),
            "{written}"
        );
        let back = Aspect::parse(&written, "vehicle.toml").unwrap();
        assert_eq!(back, a);
        // Every built-in survives the trip too, and so do awkward thresholds.
        for b in builtins() {
            let back = Aspect::parse(&b.to_toml(""), BUILTIN_SOURCE).unwrap();
            assert!(back.same_definition(&b), "{}", b.name);
        }
        let mut odd = a.clone();
        for (i, l) in odd.labels.iter_mut().enumerate() {
            l.threshold = Some([0.1f32 + f32::EPSILON, 1.0 / 3.0, 0.0][i]);
        }
        let back = Aspect::parse(&odd.to_toml(""), "vehicle.toml").unwrap();
        assert_eq!(back, odd);
    }

    #[test]
    fn per_label_threshold_errors_name_the_line() {
        let e = err(&single("").replace("\"beach\"", "\n  { name = \"beach\", threshold = 1.5 }"));
        assert_eq!(
            e.to_string(),
            "vehicle.toml:6: threshold of label \"beach\" must be between 0 and 1, not 1.5"
        );
        let e = err(&single("").replace("\"beach\"", "\n  { name = \"beach\", threshold = -0.1 }"));
        assert!(
            e.to_string()
                .starts_with("vehicle.toml:6: threshold of label"),
            "{e}"
        );
        let multi = single("").replace(
            "\"single\"",
            "\"multi\"\nneutral = { name = \"place\", threshold = 0.5 }",
        );
        let e = err(&multi);
        assert_eq!(
            e.to_string(),
            "vehicle.toml:4: the neutral has no threshold; thresholds are for labels"
        );
        let e = err(&single("").replace("\"beach\"", "{ name = \"beach\", threshold = \"high\" }"));
        assert!(
            e.to_string()
                .contains("vehicle.toml:5: invalid type: string"),
            "{e}"
        );
    }

    #[test]
    fn prompts_for_fills_templates_or_uses_the_labels_own() {
        let a = Aspect::parse(GOOD, "vehicle.toml").unwrap();
        assert_eq!(
            a.prompts_for(&a.labels[0]),
            ["a photo of a car.", "a blurry photo of a car."]
        );
        assert_eq!(a.prompts_for(&a.labels[1]), ["a photo of a bicycle."]);
        assert_eq!(
            a.prompts_for(a.neutral.as_ref().unwrap()),
            ["a photo.", "a picture of something."]
        );
    }

    #[test]
    fn errors_are_one_line_with_file_and_line() {
        let cases: &[(String, usize, &str)] = &[
            // TOML syntax.
            (
                single("top_k = = 3\n"),
                5,
                "invalid string; expected `\"`, `'`",
            ),
            (single("colour = \"red\"\n"), 5, "unknown field `colour`"),
            (
                single("").replace("\"single\"", "\"several\""),
                3,
                "unknown variant `several`",
            ),
            (
                single("").replace("a photo of a {}.", "a photo"),
                4,
                "template \"a photo\" has no {}",
            ),
            (
                single("").replace("a photo of a {}.", "a {} of a {}"),
                4,
                "template \"a {} of a {}\" has more than one {}",
            ),
            (
                single("").replace("\"beach\"", "\n  \"beach\",\n  \"Kitchen\""),
                7,
                "label \"Kitchen\" appears twice (first on line 5)",
            ),
            (
                single("").replace("\"beach\"", "\"  \""),
                5,
                "label name is empty",
            ),
            (
                single("neutral = \"place\"\n"),
                5,
                "neutral is only for kind = \"multi\"",
            ),
            (
                single("").replace("\"single\"", "\"multi\""),
                3,
                "kind = \"multi\" needs a neutral",
            ),
            (
                single("threshold = 1.5\n"),
                5,
                "threshold must be between 0 and 1, not 1.5",
            ),
            (single("top_k = 0\n"), 5, "top_k must be at least 1, not 0"),
            (
                single("").replace(
                    "\"beach\"",
                    "\n  { name = \"beach\", prompts = [\"a {} beach.\"] }",
                ),
                6,
                "prompt \"a {} beach.\" of label \"beach\" contains {}",
            ),
            (
                single("").replace("\"beach\"", "{ name = \"beach\", prompts = [] }"),
                5,
                "label \"beach\" has an empty prompts list",
            ),
            (
                single("").replace("[\"kitchen\", \"beach\"]", "[]"),
                5,
                "labels is empty",
            ),
            (
                single("").replace("[\"kitchen\", \"beach\"]", "[\"a\", 5]"),
                5,
                "invalid type: integer `5`",
            ),
            (
                single("").replace("\"scene\"", "\"My Scene\""),
                1,
                "aspect name \"My Scene\" must be lowercase",
            ),
            (
                single("").replace("\"Where.\"", "\" \""),
                2,
                "description is empty",
            ),
            (
                single("").replace("\"Where.\"", "\"Where\\tnow.\""),
                2,
                "description must be one line, without control characters",
            ),
            (
                format!("\"a\\rb\" = 1\n{}", single("")),
                1,
                "unknown field `a\\rb`",
            ),
        ];
        for (text, line, message) in cases {
            let e = err(text);
            let shown = e.to_string();
            assert_eq!(e.line, Some(*line), "{shown}\n---\n{text}");
            assert!(
                shown.starts_with(&format!("vehicle.toml:{line}: {message}")),
                "{shown}\n---\n{text}"
            );
            assert!(!shown.chars().any(char::is_control), "{shown:?}");
        }
    }

    #[test]
    fn a_builtin_name_must_match_its_file() {
        let e = parse_builtin("weather", &single("")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "prompts/aspects/weather.toml:1: name \"scene\" must equal the file stem \"weather\""
        );
    }

    #[test]
    fn a_missing_top_level_key_has_no_line() {
        let e = err(&single("").replace("kind = \"single\"\n", ""));
        assert_eq!(e.line, None);
        assert_eq!(e.to_string(), "vehicle.toml: missing field `kind`");
        // Inside a label table the table's line is known.
        let e = err(&single("").replace("\"beach\"", "\n  { prompts = [\"a beach.\"] }"));
        assert_eq!(e.to_string(), "vehicle.toml:6: missing field `name`");
    }

    #[test]
    fn unknown_key_in_a_label_table_names_it() {
        let text = single("").replace(
            "\"beach\"",
            "\n  { name = \"beach\", prompt = [\"a beach.\"] }",
        );
        let e = err(&text);
        assert_eq!(e.line, Some(6), "{e}");
        assert!(e.message.contains("unknown field `prompt`"), "{e}");
    }

    #[test]
    fn from_file_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mine.toml");
        std::fs::write(&path, single("top_k = 0\n")).unwrap();
        let e = Aspect::from_file(&path).unwrap_err().to_string();
        assert_eq!(
            e,
            format!("{}:5: top_k must be at least 1, not 0", path.display())
        );
        let missing = dir.path().join("missing.toml");
        let e = format!("{:#}", Aspect::from_file(&missing).unwrap_err());
        assert!(e.contains("missing.toml"), "{e}");
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn names(aspects: &[Aspect]) -> Vec<&str> {
        aspects.iter().map(|a| a.name.as_str()).collect()
    }

    #[test]
    fn resolve_names_all_paths_and_duplicates() {
        assert!(resolve(&[]).unwrap().is_empty());
        assert_eq!(names(&resolve(&strings(&["all"])).unwrap()), BUILTIN_NAMES);
        let got = resolve(&strings(&["mood, scene", "scene,all"])).unwrap();
        assert_eq!(
            names(&got),
            [
                "mood",
                "scene",
                "color",
                "object",
                "medium",
                "lighting",
                "time_of_day",
                "weather"
            ]
        );

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vehicle.toml");
        std::fs::write(&path, GOOD).unwrap();
        let p = path.display().to_string();
        let got = resolve(&strings(&[&format!("color,{p}"), &p])).unwrap();
        assert_eq!(names(&got), ["color", "vehicle"]);
        assert_eq!(got[1].source, p);

        // A user file that redefines a built-in's name clashes with it.
        let clash = dir.path().join("scene.toml");
        std::fs::write(&clash, single("")).unwrap();
        let e = resolve(&strings(&["scene", &clash.display().to_string()]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("two different aspects are called \"scene\": built-in and")
                && e.contains("scene.toml"),
            "{e}"
        );

        let e = resolve(&strings(&["scene,colour"]))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "colour: no such built-in aspect (did you mean \"color\"?) (built-ins: color, scene,"
            ),
            "{e}"
        );
        let e = resolve(&strings(&["scene,,mood"])).unwrap_err().to_string();
        assert!(e.contains("aspect 2 is empty"), "{e}");
        let e = format!(
            "{:#}",
            resolve(&strings(&["no/such/file.toml"])).unwrap_err()
        );
        assert!(e.contains("no/such/file.toml"), "{e}");
    }

    #[test]
    fn line_numbers_count_newlines() {
        assert_eq!(line_of("a\nb\r\nc", 0), 1);
        assert_eq!(line_of("a\nb\r\nc", 2), 2);
        assert_eq!(line_of("a\nb\r\nc", 5), 3);
        assert_eq!(line_of("a", 99), 1);
    }
}
