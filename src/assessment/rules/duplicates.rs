//! The cross-file rule: the same server name defined twice where the entries apply together.

use std::collections::BTreeMap;

use super::Out;
use crate::assessment::{Severity, SuggestedFix};
use crate::clients::{ConfigFile, ServerEntry};

pub(super) fn duplicates(out: &mut Out<'_>, files: &[ConfigFile]) {
    // Entries apply together when they are global (user scope) or belong to the same project:
    // a project-scope file's directory, or a `projects.<dir>` section of ~/.claude.json.
    type Place<'a> = (&'a ConfigFile, &'a ServerEntry, Option<String>);
    let mut seen: BTreeMap<(&str, String), Vec<Place<'_>>> = BTreeMap::new();
    for f in files {
        let file_project = crate::clients::project_dir(f);
        for e in &f.servers {
            let project = e
                .pointer
                .strip_prefix("/projects/")
                .and_then(|rest| rest.split_once("/mcpServers/"))
                .map(|(p, _)| p.replace("~1", "/").replace("~0", "~"))
                .or_else(|| file_project.clone());
            seen.entry((f.client.as_str(), e.name.clone()))
                .or_default()
                .push((f, e, project));
        }
    }
    for ((client, name), places) in seen {
        if places.len() < 2 {
            continue;
        }
        let mut contexts: Vec<Option<&String>> = places.iter().map(|p| p.2.as_ref()).collect();
        contexts.sort();
        contexts.dedup();
        let mut flagged = std::collections::BTreeSet::new();
        for ctx in contexts {
            let together: Vec<&Place<'_>> = places
                .iter()
                .filter(|p| p.2.is_none() || p.2.as_ref() == ctx)
                .collect();
            if together.len() < 2 {
                continue;
            }
            let paths: Vec<String> = together
                .iter()
                .map(|(f, e, _)| format!("{}#{}", f.path, e.pointer))
                .collect();
            for (f, e, _) in together.iter().skip(1) {
                if !flagged.insert((f.path.clone(), e.pointer.clone())) {
                    continue;
                }
                out.add(
                    "duplicate-server-name",
                    Severity::Low,
                    f,
                    e.pointer.clone(),
                    Some(&name),
                    format!(
                        "{client} defines server {name} {} times where they apply together; which one runs depends on the client's precedence",
                        paths.len()
                    ),
                    paths.join(", "),
                    Some(SuggestedFix::text("keep one definition and remove the others")),
                );
            }
        }
    }
}
