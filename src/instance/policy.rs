//! Pure policy decisions for child MCP server instances: instance and exposed tool names,
//! per-tool access (allow, deny, approval), tool definition pinning hashes and
//! prompt-injection flags for tool descriptions.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::approval::canonical::canonical_json;

/// Separator between the instance name and the tool name in an exposed tool name.
pub const SEPARATOR: &str = "__";
/// The longest exposed tool name (`<instance>__<tool>`), in bytes.
pub const MAX_TOOL_NAME: usize = 64;
/// The longest instance name, in characters.
pub const MAX_INSTANCE_NAME: usize = 24;
/// The longest glob in a [`ToolPolicy`], in characters.
pub const MAX_GLOB: usize = 200;

/// How many hex characters of the SHA-256 of the original tool name a shortened name ends with.
const HASH_CHARS: usize = 6;

const INSTANCE_NAME_EXPECTED: &str = "expected 1 to 24 lowercase ASCII letters, digits and single \
     '-' or '_', starting with a letter and not ending with '-' or '_'";

/// Checks that `name` can be used as an instance name. The rules make splitting
/// `<instance>__<tool>` at the first `__` exact: the name never contains `__` and never ends
/// with `_` (which would merge into the separator).
pub fn check_instance_name(name: &str) -> Result<(), String> {
    let fail = |what: String| {
        Err(format!(
            "instance name {name:?} {what}; {INSTANCE_NAME_EXPECTED}"
        ))
    };
    let count = name.chars().count();
    if count == 0 {
        return fail("is empty".into());
    }
    if count > MAX_INSTANCE_NAME {
        return fail(format!("is {count} characters long"));
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return fail("does not start with a lowercase letter".into());
    }
    if let Some(bad) = name
        .chars()
        .find(|&c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_'))
    {
        return fail(format!("contains {bad:?}"));
    }
    if name.contains(SEPARATOR) {
        return fail(format!(
            "contains {SEPARATOR:?}, the instance/tool separator"
        ));
    }
    let is_sep = |b: &u8| *b == b'-' || *b == b'_';
    if name.as_bytes().windows(2).any(|w| w.iter().all(is_sep)) {
        return fail("has two '-' or '_' in a row".into());
    }
    if name.ends_with(['-', '_']) {
        return fail("ends with '-' or '_'".into());
    }
    Ok(())
}

fn tool_char_allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

/// The part of an exposed tool name after `<instance>__`. A tool name made of
/// `[A-Za-z0-9_.-]` that fits within [`MAX_TOOL_NAME`] is kept unchanged. Otherwise every
/// other character becomes `_`, and a name still too long (or empty) is cut and gets `-` plus
/// the first 6 hex characters of the SHA-256 of the original name, so the whole exposed name
/// fits. Deterministic, but not reversible and not collision-free: the caller keeps a map from
/// exposed name to original name and must check that no two tools map to the same part.
/// Instance names accepted by [`check_instance_name`] always leave room for the suffix.
pub fn exposed_tool_part(instance: &str, tool: &str) -> String {
    let fits = |len: usize| instance.len() + SEPARATOR.len() + len <= MAX_TOOL_NAME;
    if !tool.is_empty() && fits(tool.len()) && tool.chars().all(tool_char_allowed) {
        return tool.to_string();
    }
    let sanitized: String = tool
        .chars()
        .map(|c| if tool_char_allowed(c) { c } else { '_' })
        .collect();
    // An empty part would make `<instance>__` unsplittable, so it takes the hashed form too.
    if !sanitized.is_empty() && fits(sanitized.len()) {
        return sanitized;
    }
    hashed_tool_part(instance, tool)
}

/// The hashed form of [`exposed_tool_part`]: the sanitized name, cut to fit, then `-` and the
/// first 6 hex characters of the SHA-256 of the original name. Used as is for names that do
/// not fit, and for a name whose plain form another tool of the instance already has.
pub fn hashed_tool_part(instance: &str, tool: &str) -> String {
    let sanitized: String = tool
        .chars()
        .map(|c| if tool_char_allowed(c) { c } else { '_' })
        .collect();
    let digest = hex::encode(Sha256::digest(tool.as_bytes()));
    let room = MAX_TOOL_NAME.saturating_sub(instance.len() + SEPARATOR.len() + 1 + HASH_CHARS);
    // `sanitized` is ASCII only, so taking chars is taking bytes.
    let mut part: String = sanitized.chars().take(room).collect();
    part.push('-');
    part.extend(digest.chars().take(HASH_CHARS));
    part
}

/// Splits an exposed tool name into `(instance, tool part)` at the first `__`. `None` when
/// there is no separator or either side is empty.
pub fn split_exposed(name: &str) -> Option<(&str, &str)> {
    let (instance, tool) = name.split_once(SEPARATOR)?;
    (!instance.is_empty() && !tool.is_empty()).then_some((instance, tool))
}

/// Which tools of an instance are exposed, and which need a person's approval per call.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolPolicy {
    /// If not empty, only tools matching one of these globs are exposed.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Tools matching these globs are never exposed nor callable. Deny wins over everything.
    #[serde(default)]
    pub deny: Vec<String>,
    /// Tools matching these globs need a person's approval for every call.
    #[serde(default)]
    pub approval: Vec<String>,
    /// Tools matching these globs never need approval, even when annotated destructiveHint.
    #[serde(default)]
    pub no_approval: Vec<String>,
}

/// What a [`ToolPolicy`] says about one tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ToolAccess {
    /// Exposed and callable without asking anyone.
    Allowed,
    /// Exposed; every call waits for a person's approval.
    Approval,
    /// Neither listed nor callable.
    Denied,
}

impl ToolAccess {
    /// The snake_case name, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ToolAccess::Allowed => "allowed",
            ToolAccess::Approval => "approval",
            ToolAccess::Denied => "denied",
        }
    }
}

fn any_match(globs: &[String], tool: &str) -> bool {
    globs.iter().any(|g| crate::glob::matches(g, tool))
}

impl ToolPolicy {
    /// Decides access for `tool` given its `readOnlyHint` and `destructiveHint` annotations.
    /// Order: deny match → Denied; allow non-empty and no match → Denied; no_approval match →
    /// Allowed; approval match → Approval; destructive == Some(true) && read_only != Some(true)
    /// → Approval; else Allowed.
    pub fn access(
        &self,
        tool: &str,
        read_only: Option<bool>,
        destructive: Option<bool>,
    ) -> ToolAccess {
        if any_match(&self.deny, tool) {
            return ToolAccess::Denied;
        }
        if !self.allow.is_empty() && !any_match(&self.allow, tool) {
            return ToolAccess::Denied;
        }
        if any_match(&self.no_approval, tool) {
            return ToolAccess::Allowed;
        }
        if any_match(&self.approval, tool) {
            return ToolAccess::Approval;
        }
        // Annotations are hints from the child, so they only ever add a gate, never lift one.
        // A tool claiming both read-only and destructive is contradictory; read-only wins as the
        // spec says destructiveHint is meaningful only when readOnlyHint is false. An absent
        // destructiveHint does not gate although the spec's default is true: most servers send
        // no annotations at all, and gating every such tool would drown real approvals in noise.
        if destructive == Some(true) && read_only != Some(true) {
            return ToolAccess::Approval;
        }
        ToolAccess::Allowed
    }

    /// Validates the globs: non-empty (not blank), at most [`MAX_GLOB`] characters. The error
    /// names the list and index, e.g. `policy.deny[2]: ...`.
    pub fn validate(&self) -> Result<(), String> {
        let lists = [
            ("allow", &self.allow),
            ("deny", &self.deny),
            ("approval", &self.approval),
            ("no_approval", &self.no_approval),
        ];
        for (list, globs) in lists {
            for (i, glob) in globs.iter().enumerate() {
                let len = glob.chars().count();
                if glob.trim().is_empty() {
                    return Err(format!(
                        "policy.{list}[{i}]: glob is empty; expected a tool name or a pattern \
                         with * and ?, e.g. \"delete_*\""
                    ));
                }
                if len > MAX_GLOB {
                    return Err(format!(
                        "policy.{list}[{i}]: glob is {len} characters long; at most {MAX_GLOB} \
                         are allowed"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The keys of an MCP Tool that define what the model sees and what the tool accepts.
const PINNED_KEYS: [&str; 6] = [
    "name",
    "title",
    "description",
    "inputSchema",
    "outputSchema",
    "annotations",
];

/// Hex SHA-256 of the canonical JSON of the tool's `name`, `title`, `description`,
/// `inputSchema`, `outputSchema` and `annotations` (an MCP Tool as JSON, camelCase keys).
/// Other keys (`_meta`, `icons`, ...) do not change the hash. Absent keys are left out; a key
/// set to null counts as absent. A value that is not an object hashes like `{}`.
pub fn definition_hash(tool: &Value) -> String {
    let mut picked = Map::new();
    if let Some(obj) = tool.as_object() {
        for key in PINNED_KEYS {
            // Null is treated as absent so a child switching serializers (skip vs null for
            // unset fields) does not look like a changed definition.
            if let Some(v) = obj.get(key).filter(|v| !v.is_null()) {
                picked.insert(key.to_string(), v.clone());
            }
        }
    }
    hex::encode(Sha256::digest(
        canonical_json(&Value::Object(picked)).as_bytes(),
    ))
}

/// Rule id: an `<IMPORTANT>`, `<SYSTEM>`, `<instructions>` or `<secret>` style tag.
pub const RULE_HIDDEN_TAG: &str = "hidden-tag";
/// Rule id: zero-width, bidi control, Unicode tag or soft hyphen characters.
pub const RULE_HIDDEN_UNICODE: &str = "hidden-unicode";
/// Rule id: telling the model to ignore its previous instructions.
pub const RULE_IGNORE_INSTRUCTIONS: &str = "ignore-instructions";
/// Rule id: telling the model to keep something from the user.
pub const RULE_CONCEAL_FROM_USER: &str = "conceal-from-user";
/// Rule id: telling the model to read or pass on credentials or secret files.
pub const RULE_READ_SECRETS: &str = "read-secrets";
/// Rule id: telling the model to send data to a URL or smuggle it through a parameter.
pub const RULE_EXFILTRATE: &str = "exfiltrate";

/// One suspicious passage found in a tool's text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct InjectionFlag {
    /// Rule id, one of the `RULE_*` constants.
    pub rule: String,
    /// A short, human-readable explanation.
    pub message: String,
    /// The matched text, at most 80 chars, with hidden characters shown as \u{XXXX} escapes.
    pub excerpt: String,
}

const MAX_EXCERPT: usize = 80;
/// How far (in bytes of text) an instruction verb may be from the secret it refers to.
const NEAR: usize = 60;

const TAGS: &str = "important|system|system_prompt|system-prompt|instructions|instruction|secret|hidden|critical|sys";
// Patterns: slots separated by spaces; `a|b` alternatives, `do+not` a multi-word alternative,
// `[..]` an optional slot, `.` the end of a clause (punctuation, end of text, or and/but).
const IGNORE: [&str; 5] = [
    "ignore|disregard|forget [all|any] [of] [the|your|my|these|those] previous|prior|above|earlier|preceding|former|original|initial|system instructions|instruction|directions|rules|prompts|prompt|guidelines|messages|context",
    "ignore|disregard|forget all|your instructions|directions|guidelines|programming",
    "ignore|disregard|forget [all] [of] the|everything|anything above|foregoing|preceding|before|previously",
    "ignore|disregard [what] the|your user|human [says|wants|asks|said] .",
    "override|overwrite|bypass|ignore|disregard|replace the|your system prompt|message|instructions",
];
const CONCEAL: [&str; 6] = [
    "do+not|don't|dont|never|must+not|mustn't|should+not|shouldn't tell|inform|mention|reveal|disclose|notify|alert [this|it|that|anything|any+of+this] [to] the|your user|users|human",
    "without telling|informing|letting the|your user|users|human",
    "hide|conceal this|it|that|these|everything|them [secret|hidden] from the|your user|users|human",
    "keep this|it|that|these|everything secret|hidden|private from the|your user|users|human",
    "the|your user|human must+not|mustn't|should+not|shouldn't|must+never|should+never|may+not know|see|notice|find+out|learn|be+told",
    "do+not|don't|dont|never let the|your user|human know|see|notice",
];
const SECRET_FILES: &str = "~/.ssh .ssh/ id_rsa id_ed25519 id_ecdsa id_dsa .aws/credentials mcp.json claude_desktop_config.json .netrc .git-credentials .pgpass .npmrc .kube/config .docker/config.json /etc/shadow .env";
const SECRET_PHRASES: [&str; 7] = [
    "api key|keys",
    "apikey|apikeys|password|passwords|passphrase",
    "private|secret|ssh key|keys",
    "access|auth|bearer|refresh|session token|tokens",
    "client secret|secrets",
    "seed|recovery phrase",
    "session cookie|cookies",
];
// Imperative forms only: legitimate descriptions say "Reads a file", injected ones "read ...".
const READ_VERBS: &str = "read|open|cat|send|include|pass|exfiltrate|upload|leak|forward|attach|copy|paste|share|print|dump|extract";
const SEND_VERBS: &str = "send|post|upload|forward|transmit|exfiltrate|leak";
const EXFIL: [&str; 2] = [
    "as|in|into|via|inside [a|the|its] sidenote|side+note|sidenotes",
    "as|in|into|via [a|the] parameter|argument|field named|called",
];

/// Flags passages in `text` (a tool's description, say) that look like prompt injection.
/// At most one flag per rule (its first match), in the order of the `RULE_*` constants.
/// Heuristic: a flag is a reason for a person to look, not proof.
pub fn injection_flags(text: &str) -> Vec<InjectionFlag> {
    let scan = Scan::new(text);
    let at = |rule: &'static str, message: &str, span: Option<(usize, usize)>| {
        span.map(|(s, e)| (rule, message.to_string(), scan.excerpt(s, e)))
    };
    [
        at(
            RULE_HIDDEN_TAG,
            "contains a tag that models may treat as a privileged instruction block",
            scan.hidden_tag(),
        ),
        hidden_unicode(text).map(|(message, excerpt)| (RULE_HIDDEN_UNICODE, message, excerpt)),
        at(
            RULE_IGNORE_INSTRUCTIONS,
            "tells the model to ignore its previous instructions",
            scan.phrase(&IGNORE),
        ),
        at(
            RULE_CONCEAL_FROM_USER,
            "tells the model to keep something from the user",
            scan.phrase(&CONCEAL),
        ),
        at(
            RULE_READ_SECRETS,
            "asks the model to read or pass on credentials or secret files",
            scan.read_secrets(),
        ),
        at(
            RULE_EXFILTRATE,
            "asks the model to send data to a URL or smuggle it through a parameter",
            earliest(scan.phrase(&EXFIL), scan.send_to_url()),
        ),
    ]
    .into_iter()
    .flatten()
    .map(|(rule, message, excerpt)| InjectionFlag {
        rule: rule.to_string(),
        message,
        excerpt,
    })
    .collect()
}

fn is_hidden(c: char) -> bool {
    matches!(c as u32,
        0x00AD | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x2064 | 0x2066..=0x2069
            | 0xFEFF | 0xE0000..=0xE007F)
}

fn hidden_unicode(text: &str) -> Option<(String, String)> {
    let (at, first) = text.char_indices().find(|&(_, c)| is_hidden(c))?;
    let count = text.chars().filter(|&c| is_hidden(c)).count();
    let mut message = format!(
        "contains {count} invisible or text-direction control character(s), the first U+{:04X}",
        first as u32
    );
    // Unicode tag characters mirror ASCII; decoding them shows what was smuggled.
    let smuggled: String = text
        .chars()
        .filter_map(|c| match c as u32 {
            t @ 0xE0020..=0xE007E => char::from_u32(t - 0xE0000),
            _ => None,
        })
        .take(60)
        .collect();
    if !smuggled.is_empty() {
        message.push_str(&format!("; the tag characters spell {smuggled:?}"));
    }
    let before: usize = text[..at].chars().rev().take(12).map(char::len_utf8).sum();
    Some((message, excerpt_of(&text[at - before..])))
}

/// Shows `s` with hidden and control characters escaped, cut to [`MAX_EXCERPT`] characters.
fn excerpt_of(s: &str) -> String {
    // One char more than fits is enough to know the text must be cut.
    let pieces: Vec<String> = s
        .chars()
        .take(MAX_EXCERPT + 1)
        .map(|c| match c {
            '\n' | '\r' | '\t' => " ".to_string(),
            c if is_hidden(c) || c.is_control() => format!("\\u{{{:04X}}}", c as u32),
            c => c.to_string(),
        })
        .collect();
    let total: usize = pieces.iter().map(|p| p.chars().count()).sum();
    if total <= MAX_EXCERPT {
        return pieces.concat();
    }
    let (mut out, mut used) = (String::new(), 0);
    for piece in pieces {
        let len = piece.chars().count();
        // Whole pieces only, so an escape is never cut in half; one char is kept for '…'.
        if used + len > MAX_EXCERPT - 1 {
            break;
        }
        out.push_str(&piece);
        used += len;
    }
    out.push('…');
    out
}

/// Whether `word` is one of the `|`-separated `list`.
fn one_of(word: &str, list: &str) -> bool {
    list.split('|').any(|w| w == word)
}

fn earliest(a: Option<(usize, usize)>, b: Option<(usize, usize)>) -> Option<(usize, usize)> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if y.0 < x.0 { y } else { x }),
        (x, y) => x.or(y),
    }
}

struct Slot {
    optional: bool,
    clause_end: bool,
    alts: Vec<Vec<&'static str>>,
}

fn parse_pattern(pattern: &'static str) -> Vec<Slot> {
    pattern
        .split(' ')
        .map(|token| {
            let inner = token.strip_prefix('[').and_then(|t| t.strip_suffix(']'));
            Slot {
                optional: inner.is_some(),
                clause_end: token == ".",
                alts: inner
                    .unwrap_or(token)
                    .split('|')
                    .map(|a| a.split('+').collect())
                    .collect(),
            }
        })
        .collect()
}

/// A text prepared for scanning: ASCII-lowercased (the patterns are ASCII), hidden characters
/// dropped (so they cannot split a phrase), curly apostrophes made straight, cut into words, and
/// mapped back to the original's byte offsets for excerpts.
struct Scan<'a> {
    original: &'a str,
    norm: String,
    /// For each byte of `norm`: the byte range in `original` of the character it came from.
    origin: Vec<(usize, usize)>,
    /// Byte ranges in `norm` of runs of letters, digits, `_` and inner apostrophes.
    words: Vec<(usize, usize)>,
}

impl<'a> Scan<'a> {
    fn new(original: &'a str) -> Self {
        let (mut norm, mut origin) = (String::new(), Vec::new());
        for (i, c) in original.char_indices().filter(|&(_, c)| !is_hidden(c)) {
            let mapped = match c {
                '\u{2018}' | '\u{2019}' | '\u{02BC}' => '\'',
                c => c.to_ascii_lowercase(),
            };
            norm.push(mapped);
            origin.extend(std::iter::repeat_n(
                (i, i + c.len_utf8()),
                mapped.len_utf8(),
            ));
        }
        let mut words = Vec::new();
        let mut start = None;
        for (i, c) in norm.char_indices().chain([(norm.len(), ' ')]) {
            let in_word = c.is_alphanumeric() || c == '_' || c == '\'';
            match (in_word, start) {
                (true, None) => start = Some(i),
                (false, Some(s)) => {
                    let raw = &norm[s..i];
                    let word = raw.trim_matches('\'');
                    if !word.is_empty() {
                        let s = s + raw.len() - raw.trim_start_matches('\'').len();
                        words.push((s, s + word.len()));
                    }
                    start = None;
                }
                _ => {}
            }
        }
        Scan {
            original,
            norm,
            origin,
            words,
        }
    }

    fn word(&self, i: usize) -> &str {
        self.words.get(i).map_or("", |&(s, e)| &self.norm[s..e])
    }

    fn excerpt(&self, start: usize, end: usize) -> String {
        match (
            self.origin.get(start),
            end.checked_sub(1).and_then(|e| self.origin.get(e)),
        ) {
            (Some(&(s, _)), Some(&(_, e))) if s < e => excerpt_of(&self.original[s..e]),
            _ => String::new(),
        }
    }

    /// The word index after a match of `slots` starting at word `pos`, if it matches.
    fn match_slots(&self, pos: usize, slots: &[Slot]) -> Option<usize> {
        let Some((slot, rest)) = slots.split_first() else {
            return Some(pos);
        };
        if slot.clause_end {
            return self.clause_ends(pos).then(|| self.match_slots(pos, rest))?;
        }
        let here = |alt: &Vec<&str>| {
            alt.iter()
                .enumerate()
                .all(|(k, w)| self.word(pos + k) == *w)
        };
        if let Some(end) = slot
            .alts
            .iter()
            .filter(|alt| here(alt))
            .find_map(|alt| self.match_slots(pos + alt.len(), rest))
        {
            return Some(end);
        }
        if slot.optional {
            self.match_slots(pos, rest)
        } else {
            None
        }
    }

    /// Whether the clause ends before word `pos`: end of text, punctuation, or a conjunction.
    fn clause_ends(&self, pos: usize) -> bool {
        let (Some(&(_, prev_end)), Some(&(next, _))) = (
            pos.checked_sub(1).and_then(|p| self.words.get(p)),
            self.words.get(pos),
        ) else {
            return true;
        };
        self.norm[prev_end..next].contains(['.', ',', ';', ':', '!', '?', ')', '\n'])
            || matches!(
                self.word(pos),
                "and" | "but" | "then" | "completely" | "entirely"
            )
    }

    /// Every match of any of `patterns`, as word ranges, in text order.
    fn phrases(&self, patterns: &[&'static str]) -> Vec<(usize, usize)> {
        let parsed: Vec<Vec<Slot>> = patterns.iter().map(|p| parse_pattern(p)).collect();
        (0..self.words.len())
            .filter_map(|pos| {
                parsed
                    .iter()
                    .find_map(|p| self.match_slots(pos, p))
                    .map(|e| (pos, e))
            })
            .filter(|&(s, e)| e > s)
            .collect()
    }

    /// The first match of any of `patterns`, as a byte range of `norm`.
    fn phrase(&self, patterns: &[&'static str]) -> Option<(usize, usize)> {
        let (s, e) = *self.phrases(patterns).first()?;
        Some((self.words.get(s)?.0, self.words.get(e - 1)?.1))
    }

    // The word windows below are found by binary search and bounded by NEAR, so a huge
    // description full of near-misses stays linear rather than quadratic. They also stop at a
    // sentence end: "Read the docs. An API key is required" is no instruction to read a key.

    /// Whether `norm[from..to]` crosses the end of a sentence.
    fn sentence_ends(&self, from: usize, to: usize) -> bool {
        let gap = &self.norm[from..to];
        [". ", ".\n", "!", "?", "\n\n"]
            .iter()
            .any(|end| gap.contains(end))
    }

    /// Indices of the words in the same sentence ending at most [`NEAR`] bytes before `at`,
    /// nearest first.
    fn words_before(&self, at: usize) -> impl Iterator<Item = usize> + '_ {
        let first_after = self.words.partition_point(|&(_, e)| e <= at);
        // Words hold no punctuation, so checking each gap between neighbours once suffices.
        let mut gap_end = at;
        (0..first_after).rev().take_while(move |&i| {
            let (start, end) = self.words[i];
            let near = at - end <= NEAR && !self.sentence_ends(end, gap_end);
            gap_end = start;
            near
        })
    }

    /// Indices of the words in the same sentence starting at most [`NEAR`] bytes after `end`,
    /// nearest first.
    fn words_after(&self, end: usize) -> impl Iterator<Item = usize> + '_ {
        let first = self.words.partition_point(|&(s, _)| s < end);
        let mut gap_start = end;
        (first..self.words.len()).take_while(move |&i| {
            let (start, word_end) = self.words[i];
            let near = start - end <= NEAR && !self.sentence_ends(gap_start, start);
            gap_start = word_end;
            near
        })
    }

    /// The nearest of the `|`-separated `verbs` ending at most [`NEAR`] bytes before `at`.
    fn verb_before(&self, at: usize, verbs: &str) -> Option<usize> {
        self.words_before(at).find(|&i| one_of(self.word(i), verbs))
    }

    fn hidden_tag(&self) -> Option<(usize, usize)> {
        let bytes = self.norm.as_bytes();
        self.norm.match_indices('<').find_map(|(at, _)| {
            let rest = &self.norm[at + 1..];
            let rest = rest.strip_prefix('/').unwrap_or(rest).trim_start();
            let name_len = rest
                .find(|c: char| !(c.is_ascii_lowercase() || c == '_' || c == '-'))
                .unwrap_or(rest.len());
            if !one_of(&rest[..name_len], TAGS) {
                return None;
            }
            let after = &rest[name_len..];
            // Attributes are allowed (`<important level="high">`) but a '<' ends the attempt.
            let close = after.find(['>', '<']).filter(|&i| i <= NEAR)?;
            let end = bytes.len() - after.len() + close;
            (bytes.get(end) == Some(&b'>')
                && (close == 0 || after.starts_with([' ', '/', '\t', '\n'])))
            .then_some((at, end + 1))
        })
    }

    fn read_secrets(&self) -> Option<(usize, usize)> {
        let mut best = None;
        for term in SECRET_FILES.split(' ') {
            for (at, _) in self.norm.match_indices(term) {
                let end = at + term.len();
                if term == ".env" && !self.is_env_file(at, end) {
                    continue;
                }
                // Show the whole path (`~/.ssh/id_rsa`), not just the part that matched.
                let tail = &self.norm[end..];
                let tail = &tail[..tail.char_indices().nth(NEAR).map_or(tail.len(), |(i, _)| i)];
                let path = tail
                    .split(|c: char| c.is_whitespace() || "'\"`,;()<>".contains(c))
                    .next()
                    .unwrap_or("");
                let end = end + path.trim_end_matches(['.', ':']).len();
                let before = self
                    .verb_before(at, READ_VERBS)
                    .map(|v| (self.words[v].0, end));
                let after = || {
                    self.words_after(end)
                        .find(|&i| one_of(self.word(i), READ_VERBS))
                        .map(|v| (at, self.words[v].1))
                };
                if let Some(span) = before.or_else(after) {
                    best = earliest(best, Some(span));
                    break;
                }
            }
        }
        for (s, e) in self.phrases(&SECRET_PHRASES) {
            let (start, end) = (self.words[s].0, self.words[e - 1].1);
            if let Some(v) = self.verb_before(start, READ_VERBS) {
                best = earliest(best, Some((self.words[v].0, end)));
                break;
            }
        }
        best
    }

    /// `.env` as a file name, not `process.env` or `.envrc`.
    fn is_env_file(&self, at: usize, end: usize) -> bool {
        let word_byte = |b: &u8| b.is_ascii_alphanumeric() || *b == b'_';
        let bytes = self.norm.as_bytes();
        !at.checked_sub(1)
            .and_then(|p| bytes.get(p))
            .is_some_and(word_byte)
            && !bytes.get(end).is_some_and(word_byte)
    }

    /// A send-like verb, then `to`, then an http(s) URL within [`NEAR`] bytes.
    fn send_to_url(&self) -> Option<(usize, usize)> {
        self.norm.match_indices("http").find_map(|(at, _)| {
            let rest = &self.norm[at..];
            if !(rest.starts_with("http://") || rest.starts_with("https://")) {
                return None;
            }
            let verb = self.verb_before(at, SEND_VERBS)?;
            if !(verb + 1..self.words.len())
                .take_while(|&i| self.words[i].1 <= at)
                .any(|i| self.word(i) == "to")
            {
                return None;
            }
            // Unbounded, but reached at most once: this occurrence is the match.
            let url_end = at + rest.find(char::is_whitespace).unwrap_or(rest.len());
            Some((self.words[verb].0, url_end))
        })
    }
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
