//! The one glob dialect of every policy list (assessment package, command and server lists, and
//! child tool policies): whole-string, case-sensitive, `*` any run of characters (also none),
//! `?` exactly one character, everything else itself; matched by the `wildmatch` crate.

/// Whether `name` matches `pattern` as a whole.
pub fn matches(pattern: &str, name: &str) -> bool {
    wildmatch::WildMatch::new(pattern).matches(name)
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn assessment_list_examples_keep_their_meaning() {
        assert!(matches(
            "@modelcontextprotocol/*",
            "@modelcontextprotocol/server-github"
        ));
        assert!(!matches("@modelcontextprotocol/*", "@evil/server-github"));
        assert!(matches("*-mcp", "weather-mcp"));
        assert!(matches(
            "ghcr.io/github/*",
            "ghcr.io/github/github-mcp-server"
        ));
        // `.` and `/` are ordinary characters, not path separators.
        assert!(matches("*server*", "@scope/a.server.b"));
        assert!(!matches("mcp-server-*", "MCP-SERVER-x"));
    }

    /// Obviously correct, exponential reference matcher.
    fn reference(p: &[char], n: &[char]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some(('*', rest)) => (0..=n.len()).any(|k| reference(rest, &n[k..])),
            Some((&c, rest)) => {
                n.first().is_some_and(|&m| c == '?' || c == m) && reference(rest, &n[1..])
            }
        }
    }

    /// Every string over `alphabet` up to `max_len` characters.
    fn all_strings(alphabet: &[char], max_len: usize) -> Vec<String> {
        let mut out = vec![String::new()];
        let mut layer = vec![String::new()];
        for _ in 0..max_len {
            layer = layer
                .iter()
                .flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}")))
                .collect();
            out.extend(layer.iter().cloned());
        }
        out
    }

    #[test]
    fn glob_examples() {
        let yes = [
            ("*", ""),
            ("*", "anything"),
            ("delete_*", "delete_repo"),
            ("delete_*", "delete_"),
            ("*_file", "read_file"),
            ("get_?", "get_x"),
            ("a*b*c", "aXXbYYc"),
            ("é?", "éü"),
            ("", ""),
            ("a.b", "a.b"),
        ];
        let no = [
            ("delete_*", "xdelete_repo"),
            ("*_file", "read_files"),
            ("get_?", "get_"),
            ("get_?", "get_xy"),
            ("Read*", "read_file"),
            ("", "a"),
            ("a.b", "axb"),
        ];
        yes.iter()
            .for_each(|(p, n)| assert!(matches(p, n), "{p} {n}"));
        no.iter()
            .for_each(|(p, n)| assert!(!matches(p, n), "{p} {n}"));
    }

    #[test]
    fn glob_agrees_with_reference_exhaustively() {
        let names = all_strings(&['a', 'b'], 6);
        for p in all_strings(&['a', 'b', '*', '?'], 5) {
            let pc: Vec<char> = p.chars().collect();
            for n in &names {
                let nc: Vec<char> = n.chars().collect();
                assert_eq!(matches(&p, n), reference(&pc, &nc), "{p:?} vs {n:?}");
            }
        }
    }

    #[test]
    fn glob_pathological_input_is_fast() {
        let pattern = format!("{}b", "a*".repeat(100));
        let name = "a".repeat(10_000);
        let started = std::time::Instant::now();
        assert!(!matches(&pattern, &name));
        assert!(matches(&pattern, &format!("{name}b")));
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }
}
