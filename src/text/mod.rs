//! Text side: the checkpoint's tokenizer, prompt templates and label lists, and the on-disk cache
//! of text embeddings ([`cache`]).

pub(crate) mod cache;

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tokenizers::{TruncationDirection, TruncationParams, TruncationStrategy};

use crate::model::{Padding, TextNormalization, TextPolicy};
use crate::Error;

/// The checkpoint's `tokenizer.json`, set to cut prompts to the text tower's context, normalise
/// and pad them as the model family's [`TextPolicy`] says.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    policy: TextPolicy,
    /// The id of [`Padding::Full`]'s padding (`None` for [`Padding::Longest`]).
    pad_id: Option<u32>,
}

/// Token ids of a batch of prompts (padded only under [`Padding::Full`]), and which prompts had to
/// be cut to fit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokenized {
    pub ids: Vec<Vec<u32>>,
    pub truncated: Vec<usize>,
}

/// Largest decompressed `tokenizer.json.gz` accepted (the real Gemma tokenizer of SigLIP 2 is
/// 34 MB): a corrupt or hostile archive cannot fill the memory.
const MAX_TOKENIZER_BYTES: u64 = 1 << 30;

/// Reads `tokenizer.json`, or `tokenizer.json.gz` (gzip, e.g. a large tokenizer kept compressed in
/// a model folder), whole.
fn read_tokenizer_file(path: &Path) -> Result<Vec<u8>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut bytes = Vec::new();
    if path.extension().is_some_and(|e| e == "gz") {
        flate2::read::GzDecoder::new(file)
            .take(MAX_TOKENIZER_BYTES + 1)
            .read_to_end(&mut bytes)
            .with_context(|| format!("cannot decompress {}", path.display()))?;
        if bytes.len() as u64 > MAX_TOKENIZER_BYTES {
            bail!(
                "{} decompresses to more than {MAX_TOKENIZER_BYTES} bytes",
                path.display()
            );
        }
    } else {
        std::io::BufReader::new(file)
            .read_to_end(&mut bytes)
            .with_context(|| format!("cannot read {}", path.display()))?;
    }
    Ok(bytes)
}

impl Tokenizer {
    pub(crate) fn from_file(path: &Path, policy: TextPolicy) -> Result<Self> {
        let bytes = read_tokenizer_file(path)?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("cannot load tokenizer {}", path.display()))?;
        Self::new(inner, policy, path)
    }

    /// A tokenizer already built (a family's own, see `ModelSpec::builtin_tokenizer`), set up as
    /// [`Self::from_file`] does; `path` names it in errors.
    pub(crate) fn new(
        mut inner: tokenizers::Tokenizer,
        policy: TextPolicy,
        path: &Path,
    ) -> Result<Self> {
        let context_len = policy.context_len;
        // Truncate the content and keep the start and end tokens, as transformers' CLIPTokenizer does
        // with `truncation=True, max_length=77` (SigLIP: 63 ids + the end token of 64): the
        // post-processor adds the special tokens after truncation leaves room for them.
        inner
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: context_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("cannot configure tokenizer {}", path.display()))?;
        let pad_id = match policy.padding {
            Padding::Longest => None,
            Padding::Full => Some(pad_id(&inner, path)?),
        };
        // The padding is ours (below), as the family's policy says, not the file's.
        inner.with_padding(None);
        Ok(Self {
            inner,
            policy,
            pad_id,
        })
    }

    pub fn policy(&self) -> TextPolicy {
        self.policy
    }

    /// The id [`Padding::Full`] pads with; `None` under [`Padding::Longest`].
    pub fn pad_id(&self) -> Option<u32> {
        self.pad_id
    }

    pub fn encode(&self, prompts: &[String]) -> Result<Tokenized> {
        let mut ids = Vec::with_capacity(prompts.len());
        let mut truncated = Vec::new();
        for (i, prompt) in prompts.iter().enumerate() {
            let text = match self.policy.normalization {
                TextNormalization::None => std::borrow::Cow::Borrowed(prompt.as_str()),
                TextNormalization::Family(normalizer) => (normalizer.apply)(prompt).into(),
            };
            let enc = self
                .inner
                .encode(text.as_ref(), true)
                .map_err(|e| anyhow::anyhow!("{e}"))
                .with_context(|| {
                    format!("cannot tokenize prompt {}", crate::error::quote(prompt))
                })?;
            if !enc.get_overflowing().is_empty() {
                truncated.push(i);
            }
            let mut seq = enc.get_ids().to_vec();
            if let Some(pad) = self.pad_id {
                let len = self.policy.context_len.max(seq.len());
                seq.resize(len, pad);
            }
            ids.push(seq);
        }
        Ok(Tokenized { ids, truncated })
    }
}

/// The files beside `tokenizer.json` that name its special tokens, as transformers reads them
/// (`PreTrainedTokenizerBase.from_pretrained`); the Hub resolver fetches them too.
pub(crate) const TOKENIZER_SIDECARS: [&str; 2] =
    ["tokenizer_config.json", "special_tokens_map.json"];

/// The id [`Padding::Full`] pads with, as transformers finds it: the `pad_token` that
/// `tokenizer_config.json` or `special_tokens_map.json` beside the tokenizer names, else the
/// `pad_token` of `tokenizer.json`'s padding section (`PreTrainedTokenizerFast.__init__` takes it
/// with `setdefault`, so the named one wins). Nothing named: refused, as transformers refuses to
/// pad without a pad token; guessing (`</s>` used to be the guess) silently changes SigLIP 2's
/// probabilities, whose `</s>` is an ordinary Gemma piece and whose pad is `<pad>` = 0 (issue 20).
fn pad_id(inner: &tokenizers::Tokenizer, path: &Path) -> Result<u32> {
    let dir = path.parent().unwrap_or(Path::new(""));
    let mut named: Option<(String, PathBuf)> = None;
    for file in TOKENIZER_SIDECARS {
        let sidecar = dir.join(file);
        if !sidecar.is_file() {
            continue;
        }
        let Some(token) = named_pad_token(&sidecar)? else {
            continue;
        };
        match &named {
            Some((first, from)) if *first != token => bail!(
                "{} names pad_token {} but {} names {}: cannot tell which token pads the text",
                from.display(),
                crate::error::quote(first),
                sidecar.display(),
                crate::error::quote(&token)
            ),
            Some(_) => {}
            None => named = Some((token, sidecar)),
        }
    }
    if let Some((token, from)) = named {
        return inner.token_to_id(&token).with_context(|| {
            format!(
                "{} names pad_token {}, which {} does not have",
                from.display(),
                crate::error::quote(&token),
                path.display()
            )
        });
    }
    inner.get_padding().map(|p| p.pad_id).with_context(|| {
        format!(
            "cannot tell which id pads the text: {} has no padding section, and no {} or {} beside it names a pad_token",
            path.display(),
            TOKENIZER_SIDECARS[0],
            TOKENIZER_SIDECARS[1]
        )
    })
}

/// The `pad_token` a `tokenizer_config.json` or `special_tokens_map.json` names: a string, or an
/// `AddedToken` object's `content`; `None` when absent or null.
fn named_pad_token(path: &Path) -> Result<Option<String>> {
    let text = read_text_file(path)?;
    let root: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: not valid JSON: {e}", path.display()))?;
    match root.get("pad_token") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(token)) => Ok(Some(token.clone())),
        Some(serde_json::Value::Object(token)) => match token.get("content") {
            Some(serde_json::Value::String(content)) => Ok(Some(content.clone())),
            _ => bail!("{}: pad_token has no \"content\" string", path.display()),
        },
        Some(_) => bail!(
            "{}: pad_token must be a string or an object with \"content\"",
            path.display()
        ),
    }
}

/// Built-in template sets, kept as data under `prompts/templates/`.
pub(crate) const BUILTIN_TEMPLATE_SETS: &[(&str, &str)] = &[(
    "imagenet",
    include_str!("../../prompts/templates/imagenet.txt"),
)];

/// A prompt template with at least one `{}` where the label goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(String);

impl Template {
    pub fn new(text: &str) -> Result<Self, Error> {
        if text.trim().is_empty() {
            return Err(Error::Usage("empty prompt template".into()));
        }
        if !text.contains("{}") {
            return Err(Error::Usage(format!(
                "template {} has no {{}} where the label goes",
                crate::error::quote(text)
            )));
        }
        Ok(Self(text.to_string()))
    }

    pub fn fill(&self, label: &str) -> String {
        self.0.replace("{}", label)
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// Resolves `--templates NAME|FILE`: a built-in set's name, else a file of one template per line.
pub(crate) fn template_set(name_or_file: &str) -> Result<Vec<Template>> {
    if let Some((_, text)) = BUILTIN_TEMPLATE_SETS
        .iter()
        .find(|(n, _)| *n == name_or_file)
    {
        return parse_templates(text, &format!("built-in template set {name_or_file}"));
    }
    let path = Path::new(name_or_file);
    if !path.exists() {
        let names: Vec<&str> = BUILTIN_TEMPLATE_SETS.iter().map(|(n, _)| *n).collect();
        bail!(Error::Usage(format!(
            "--templates {name_or_file}: no such built-in set{} ({}) and no such file",
            crate::error::hint(name_or_file, &names),
            names.join(", ")
        )));
    }
    let text = read_text_file(path)?;
    parse_templates(&text, &path.display().to_string())
}

fn parse_templates(text: &str, source: &str) -> Result<Vec<Template>> {
    let mut out = Vec::new();
    for (line_no, line) in list_lines(text) {
        let t = Template::new(line).with_context(|| format!("{source}, line {line_no}"))?;
        if out.contains(&t) {
            bail!(Error::Usage(format!(
                "{source}, line {line_no}: duplicate template {}",
                crate::error::quote(line)
            )));
        }
        out.push(t);
    }
    if out.is_empty() {
        bail!(Error::Usage(format!("{source} holds no templates")));
    }
    Ok(out)
}

/// Reads a UTF-8 text file, naming it in every error.
pub(crate) fn read_text_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(Error::Usage(format!(
            "{} is not UTF-8 text (invalid byte at offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        )))
    })
}

/// The non-blank, non-comment lines of a list file with their 1-based line numbers; tolerates a BOM,
/// CRLF line ends and surrounding spaces.
pub(crate) fn list_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    text.lines().enumerate().filter_map(|(i, line)| {
        let line = line.trim();
        (!line.is_empty() && !line.starts_with('#')).then_some((i + 1, line))
    })
}

/// Collects labels from `--labels a,b,c` values and `--labels-file` files, in that order. Empty and
/// duplicate labels are errors: a duplicate would split the probability mass between two rows.
#[derive(Debug, Default)]
pub struct LabelList {
    labels: Vec<String>,
    /// Lines of label files that look like a mistake (a comma-separated list on one line).
    warnings: Vec<String>,
}

impl LabelList {
    /// Adds the labels of one `--labels` value (comma-separated).
    pub fn add_csv(&mut self, value: &str) -> Result<(), Error> {
        for (i, part) in value.split(',').enumerate() {
            let label = part.trim();
            if label.is_empty() {
                return Err(Error::Usage(format!(
                    "--labels {}: label {} is empty",
                    crate::error::quote(value),
                    i + 1
                )));
            }
            self.push(label, &format!("--labels {}", crate::error::quote(value)))?;
        }
        Ok(())
    }

    /// Adds the labels of a label file: one per line, `#` comments and blank lines skipped.
    pub(crate) fn add_file(&mut self, path: &Path) -> Result<()> {
        let text = read_text_file(path)?;
        self.add_text(&text, &path.display().to_string())?;
        Ok(())
    }

    pub fn add_text(&mut self, text: &str, source: &str) -> Result<(), Error> {
        let before = self.labels.len();
        for (line_no, label) in list_lines(text) {
            if label.contains(',') {
                self.warnings.push(format!(
                    "{source}, line {line_no}: {} is one label (a label file takes one label per line; --labels takes comma-separated lists)",
                    crate::error::quote(label)
                ));
            }
            self.push(label, &format!("{source}, line {line_no}"))?;
        }
        if self.labels.len() == before {
            return Err(Error::Usage(format!("{source} holds no labels")));
        }
        Ok(())
    }

    fn push(&mut self, label: &str, source: &str) -> Result<(), Error> {
        if self.labels.iter().any(|l| l == label) {
            return Err(Error::Usage(format!(
                "{source}: duplicate label {}",
                crate::error::quote(label)
            )));
        }
        self.labels.push(label.to_string());
        Ok(())
    }

    pub fn finish(self) -> Result<Vec<String>, Error> {
        Ok(self.finish_with_warnings()?.0)
    }

    /// The labels, and what looked like a mistake in the label files.
    pub(crate) fn finish_with_warnings(self) -> Result<(Vec<String>, Vec<String>), Error> {
        if self.labels.is_empty() {
            return Err(Error::Usage(
                "no labels: give --labels a,b,c and/or --labels-file FILE".into(),
            ));
        }
        Ok((self.labels, self.warnings))
    }
}

/// `--template` values then the `--templates` set, without repeats; empty for the model's default
/// (`engine::text::templates_or_default`). Shared with every command that takes templates.
pub(crate) fn templates_from(values: &[String], set: Option<&str>) -> Result<Vec<Template>> {
    let mut templates = values
        .iter()
        .map(|t| Template::new(t).context("--template"))
        .collect::<Result<Vec<_>>>()?;
    if let Some(set) = set {
        for t in template_set(set)? {
            if !templates.contains(&t) {
                templates.push(t);
            }
        }
    }
    Ok(templates)
}

/// `--labels` values (each comma-separated) then `--labels-file`s: the labels, and warnings about
/// what looks like a mistake in them. (`classify`, `explain`).
pub(crate) fn labels_from(
    values: &[String],
    files: &[std::path::PathBuf],
) -> Result<(Vec<String>, Vec<String>)> {
    let mut labels = LabelList::default();
    for value in values {
        labels.add_csv(value)?;
    }
    for file in files {
        labels.add_file(file)?;
    }
    Ok(labels.finish_with_warnings()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> Tokenizer {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/models/tiny-openai/tokenizer.json");
        let policy = TextPolicy {
            context_len: 77,
            padding: Padding::Longest,
            normalization: TextNormalization::None,
        };
        Tokenizer::from_file(&path, policy).unwrap()
    }

    #[test]
    fn real_tokenizer_gives_openai_ids() {
        let t = tokenizer()
            .encode(&["a photo of a cat".to_string()])
            .unwrap();
        assert_eq!(t.ids, vec![vec![49406, 320, 1125, 539, 320, 2368, 49407]]);
        assert!(t.truncated.is_empty());
    }

    #[test]
    fn long_prompts_are_cut_keeping_the_end_token() {
        let long = "cat ".repeat(200);
        let t = tokenizer().encode(&[long, "dog".into()]).unwrap();
        assert_eq!(t.ids[0].len(), 77);
        assert_eq!(t.ids[0][0], 49406);
        assert_eq!(t.ids[0][76], 49407);
        assert_eq!(t.truncated, vec![0]);
    }

    fn policy(padding: Padding, normalization: TextNormalization) -> TextPolicy {
        TextPolicy {
            context_len: 77,
            padding,
            normalization,
        }
    }

    #[test]
    fn gzipped_tokenizers_load_and_full_padding_needs_a_pad_id() {
        use std::io::Write;
        let plain = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/models/tiny-openai/tokenizer.json");
        let dir = tempfile::tempdir().unwrap();
        let gz = dir.path().join("tokenizer.json.gz");
        let mut enc = flate2::write::GzEncoder::new(
            std::fs::File::create(&gz).unwrap(),
            flate2::Compression::fast(),
        );
        enc.write_all(&std::fs::read(&plain).unwrap()).unwrap();
        enc.finish().unwrap();
        let longest = policy(Padding::Longest, TextNormalization::None);
        let prompts = ["A photo of a cat".to_string()];
        let a = Tokenizer::from_file(&plain, longest).unwrap();
        let b = Tokenizer::from_file(&gz, longest).unwrap();
        assert_eq!(a.encode(&prompts).unwrap(), b.encode(&prompts).unwrap());
        assert_eq!(b.pad_id(), None);

        // CLIP's tokenizer.json alone has no padding section, and nothing beside it names a
        // pad token: nothing to pad with. (A family's normaliser changes nothing here.)
        let full = policy(
            Padding::Full,
            TextNormalization::Family(crate::model::Normalizer {
                name: "lower",
                apply: str::to_lowercase,
            }),
        );
        let alone = dir.path().join("tokenizer.json");
        std::fs::copy(&plain, &alone).unwrap();
        let err = format!("{:#}", Tokenizer::from_file(&alone, full).err().unwrap());
        assert!(err.contains("cannot tell which id pads the text"), "{err}");
        // Named beside it: taken, whatever the file's own padding says.
        let config = dir.path().join("tokenizer_config.json");
        std::fs::write(&config, r#"{"pad_token": "<|endoftext|>"}"#).unwrap();
        assert_eq!(
            Tokenizer::from_file(&alone, full).unwrap().pad_id(),
            Some(49407)
        );
        std::fs::write(
            dir.path().join("special_tokens_map.json"),
            r#"{"pad_token": {"content": "!"}}"#,
        )
        .unwrap();
        let err = format!("{:#}", Tokenizer::from_file(&alone, full).err().unwrap());
        assert!(
            err.contains("names pad_token \"<|endoftext|>\" but"),
            "{err}"
        );
        std::fs::write(&config, r#"{"pad_token": "<nowhere>"}"#).unwrap();
        std::fs::remove_file(dir.path().join("special_tokens_map.json")).unwrap();
        let err = format!("{:#}", Tokenizer::from_file(&alone, full).err().unwrap());
        assert!(
            err.contains("which") && err.contains("does not have"),
            "{err}"
        );

        let bad = dir.path().join("bad.json.gz");
        std::fs::write(&bad, b"not gzip at all").unwrap();
        let err = format!("{:#}", Tokenizer::from_file(&bad, longest).err().unwrap());
        assert!(
            err.starts_with("cannot decompress") && err.contains("bad.json.gz"),
            "{err}"
        );
    }

    #[test]
    fn templates_need_a_placeholder() {
        assert_eq!(
            Template::new("a photo of a {}.").unwrap().fill("cat"),
            "a photo of a cat."
        );
        let err = Template::new("a photo").unwrap_err().to_string();
        assert!(err.contains("has no {}"), "{err}");
        assert!(Template::new("  ").is_err());
    }

    #[test]
    fn builtin_imagenet_set_has_the_80_paper_templates() {
        let set = template_set("imagenet").unwrap();
        assert_eq!(set.len(), 80);
        assert_eq!(set[0].as_str(), "a bad photo of a {}.");
        assert!(template_set("no-such-set").is_err());
    }

    #[test]
    fn label_files_tolerate_bom_crlf_comments_and_blanks() {
        let mut l = LabelList::default();
        l.add_text(
            "\u{feff}# animals\r\ncat\r\n\r\n  dog  \r\n# end\r\nhot dog\r\n",
            "f",
        )
        .unwrap();
        assert_eq!(l.finish().unwrap(), vec!["cat", "dog", "hot dog"]);
    }

    #[test]
    fn labels_from_flags_and_files_are_checked_for_duplicates_and_blanks() {
        let mut l = LabelList::default();
        l.add_csv("cat, dog,car").unwrap();
        let err = l
            .add_text("bird\ncat\n", "labels.txt")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "labels.txt, line 2: duplicate label \"cat\"");
        let err = LabelList::default()
            .add_csv("cat,,dog")
            .unwrap_err()
            .to_string();
        assert!(err.contains("label 2 is empty"), "{err}");
        assert!(LabelList::default().finish().is_err());
        let err = LabelList::default()
            .add_text("# only a comment\n", "x.txt")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "x.txt holds no labels");
    }
}
