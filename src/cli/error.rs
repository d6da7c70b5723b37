//! A clap error as the one line `vlm` prints.

/// A command-line error from clap as one line: its message without the "error: " prefix and the
/// usage block, clap's suggestion kept (`did you mean '--labels'?`), plus where to read more.
pub fn clap_one_line(err: &clap::Error) -> String {
    let text = err.render().to_string();
    // The message is the first paragraph (a list of missing arguments continues on indented lines).
    let message: Vec<&str> = text
        .lines()
        .skip_while(|l| l.trim().is_empty())
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let mut message = message.join(" ");
    // clap quotes the value it refused whole: a 300-digit number or a pasted page would bury the
    // message, so it is cut to an excerpt (issue 20).
    if let Some(clap::error::ContextValue::String(value)) =
        err.get(clap::error::ContextKind::InvalidValue)
    {
        if value.chars().count() > crate::error::EXCERPT_CHARS {
            message = message.replacen(value.as_str(), &crate::error::excerpt(value), 1);
        }
    }
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    // clap's tips ("a similar argument exists: '--labels'", "a similar subcommand exists:
    // 'classify'") name the likely fix.
    let suggestion = text.lines().find_map(|l| {
        let tip = l.trim().strip_prefix("tip: ")?;
        let (_, name) = tip.split_once("exists: ")?;
        Some(format!("; did you mean {name}?"))
    });
    let suggestion = suggestion.unwrap_or_default();
    if message.is_empty() {
        "invalid arguments (see --help)".into()
    } else {
        format!("{message}{suggestion} (see --help)")
    }
}
