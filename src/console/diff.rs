//! Unified diffs as the console shows them: a preview text split into the files its diffs
//! change (and any prose around them), each line marked added, removed, hunk header, file
//! header or context, so the stylesheet colours them.
//!
//! Why a parser that counts: a removed line that itself starts with `--` reads `---`, like a
//! file header. The counts in each `@@ -a,b +c,d @@` header say how many lines belong to the
//! hunk, so such a line is known to be a removal, never a new file.

use maud::{Markup, html};

/// What one line of a diff is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    /// `--- a/...` or `+++ b/...`.
    Header,
    /// `@@ -a,b +c,d @@`.
    Hunk,
    /// `+...`.
    Added,
    /// `-...`.
    Removed,
    /// ` ...`, or `\ No newline at end of file`.
    Context,
}

impl LineKind {
    /// The CSS class of the line (`.diff .add` and so on in console.css).
    pub fn class(self) -> &'static str {
        match self {
            LineKind::Header => "meta",
            LineKind::Hunk => "hunk",
            LineKind::Added => "add",
            LineKind::Removed => "del",
            LineKind::Context => "ctx",
        }
    }
}

/// A piece of a preview.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Block {
    /// Lines that are not part of a diff.
    Text(String),
    /// The diff of one file.
    File {
        /// The file's path (the `+++` side, or the `---` side when the file is deleted).
        path: String,
        lines: Vec<(LineKind, String)>,
    },
}

/// The counts of a hunk header: (old lines, new lines).
fn hunk_counts(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("@@ -")?;
    let (ranges, _) = rest.split_once(" @@")?;
    let (old, new) = ranges.split_once(" +")?;
    let count = |range: &str| -> Option<u64> {
        match range.split_once(',') {
            Some((start, n)) => {
                start.parse::<u64>().ok()?;
                n.parse().ok()
            }
            None => range.parse::<u64>().ok().map(|_| 1),
        }
    };
    Some((count(old)?, count(new)?))
}

/// The path a `--- a/x` or `+++ b/x` header names (`a`/`b` dropped when a `/` follows).
fn header_path(line: &str) -> String {
    let name = line.get(4..).unwrap_or("").trim_end();
    // `similar` may add a tab and a timestamp after the name.
    let name = name.split('\t').next().unwrap_or(name);
    match name.as_bytes() {
        [b'a' | b'b', b'/', ..] => name[1..].to_string(),
        _ => name.to_string(),
    }
}

/// Splits a preview into prose and per-file diffs.
pub fn parse(text: &str) -> Vec<Block> {
    let lines: Vec<&str> = text.lines().collect();
    let mut blocks = Vec::new();
    let mut prose: Vec<&str> = Vec::new();
    let mut file: Option<(String, Vec<(LineKind, String)>)> = None;
    let (mut old, mut new) = (0u64, 0u64);
    let mut i = 0;
    let flush_prose = |prose: &mut Vec<&str>, blocks: &mut Vec<Block>| {
        if prose.iter().any(|l| !l.trim().is_empty()) {
            blocks.push(Block::Text(prose.join("\n")));
        }
        prose.clear();
    };
    let flush_file = |file: &mut Option<(String, Vec<(LineKind, String)>)>,
                      blocks: &mut Vec<Block>| {
        if let Some((path, lines)) = file.take() {
            blocks.push(Block::File { path, lines });
        }
    };
    while i < lines.len() {
        let line = lines[i];
        if old > 0 || new > 0 {
            let kind = match line.chars().next() {
                Some('+') if new > 0 => Some((LineKind::Added, 0, 1)),
                Some('-') if old > 0 => Some((LineKind::Removed, 1, 0)),
                Some(' ') if old > 0 && new > 0 => Some((LineKind::Context, 1, 1)),
                // An empty context line whose space was trimmed away.
                None if old > 0 && new > 0 => Some((LineKind::Context, 1, 1)),
                _ => None,
            };
            if let Some((kind, o, n)) = kind
                && let Some((_, lines)) = file.as_mut()
            {
                lines.push((kind, line.to_string()));
                old -= o;
                new -= n;
                i += 1;
                continue;
            }
            // The hunk ended early (a malformed diff): read the line afresh.
            (old, new) = (0, 0);
        }
        if line.starts_with('\\') && file.is_some() {
            if let Some((_, lines)) = file.as_mut() {
                lines.push((LineKind::Context, line.to_string()));
            }
            i += 1;
            continue;
        }
        if line.starts_with("--- ")
            && let Some(next) = lines.get(i + 1)
            && next.starts_with("+++ ")
        {
            flush_prose(&mut prose, &mut blocks);
            flush_file(&mut file, &mut blocks);
            let (from, to) = (header_path(line), header_path(next));
            let path = if to == "/dev/null" { from } else { to };
            file = Some((
                path,
                vec![
                    (LineKind::Header, line.to_string()),
                    (LineKind::Header, next.to_string()),
                ],
            ));
            i += 2;
            continue;
        }
        if let Some((o, n)) = hunk_counts(line)
            && let Some((_, lines)) = file.as_mut()
        {
            lines.push((LineKind::Hunk, line.to_string()));
            (old, new) = (o, n);
            i += 1;
            continue;
        }
        flush_file(&mut file, &mut blocks);
        prose.push(line);
        i += 1;
    }
    flush_file(&mut file, &mut blocks);
    flush_prose(&mut prose, &mut blocks);
    blocks
}

/// Whether `text` holds at least one file diff.
pub fn has_diff(text: &str) -> bool {
    parse(text).iter().any(|b| matches!(b, Block::File { .. }))
}

/// A preview as markup: each file's diff under its path, lines coloured by kind; prose as is.
pub fn render(text: &str) -> Markup {
    html! {
        @for block in parse(text) {
            @match block {
                Block::Text(t) => { pre.preview { (t) } }
                Block::File { path, lines } => {
                    section.diff-file {
                        h3 { code { (path) } }
                        // One block span per line (the stylesheet breaks them), no newlines
                        // between: inside `pre` they would double every line.
                        pre.diff { @for (kind, line) in &lines { span class=(kind.class()) { (line) } } }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_hunks_and_prose_are_told_apart() {
        let text = "--- a/home/x/.cursor/mcp.json\n+++ b/home/x/.cursor/mcp.json\n@@ -1,3 +1,3 @@\n {\n-  \"a\": 1\n+  \"a\": 2\n }\n--- a/b.json\n+++ b/b.json\n@@ -1 +1 @@\n-x\n+y\nRisk notes:\n- pins a version";
        let blocks = parse(text);
        assert_eq!(blocks.len(), 3, "{blocks:?}");
        let Block::File { path, lines } = &blocks[0] else {
            panic!("a file first: {blocks:?}");
        };
        assert_eq!(path, "/home/x/.cursor/mcp.json");
        let kinds: Vec<LineKind> = lines.iter().map(|(k, _)| *k).collect();
        use LineKind::*;
        assert_eq!(
            kinds,
            [Header, Header, Hunk, Context, Removed, Added, Context]
        );
        assert!(matches!(&blocks[1], Block::File { path, .. } if path == "/b.json"));
        assert_eq!(
            blocks[2],
            Block::Text("Risk notes:\n- pins a version".into())
        );
    }

    #[test]
    fn a_removed_line_that_starts_with_dashes_stays_in_its_hunk() {
        let text = "--- a/f\n+++ b/f\n@@ -1,2 +1,1 @@\n--- not a header\n+++ nor this\n-gone\n";
        // The hunk removes two lines and adds one: `--- not a header` is removed,
        // `+++ nor this` is added, `-gone` is removed.
        let blocks = parse(text);
        assert_eq!(blocks.len(), 1, "{blocks:?}");
        let Block::File { lines, .. } = &blocks[0] else {
            panic!("one file");
        };
        let kinds: Vec<LineKind> = lines.iter().map(|(k, _)| *k).collect();
        use LineKind::*;
        assert_eq!(kinds, [Header, Header, Hunk, Removed, Added, Removed]);
    }

    #[test]
    fn rendered_lines_carry_their_classes_and_text_is_escaped() {
        let html = render("--- a/f\n+++ b/f\n@@ -1 +1 @@\n-<old>\n+<new>\n").into_string();
        assert!(
            html.contains(r#"<span class="del">-&lt;old&gt;</span>"#),
            "{html}"
        );
        assert!(
            html.contains(r#"<span class="add">+&lt;new&gt;</span>"#),
            "{html}"
        );
        assert!(
            html.contains(r#"<span class="hunk">@@ -1 +1 @@</span>"#),
            "{html}"
        );
        assert!(html.contains("<h3><code>/f</code></h3>"), "{html}");
        assert!(!has_diff("just words\n--- but no diff"));
    }
}
