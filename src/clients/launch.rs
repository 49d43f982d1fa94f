//! What a stdio server's command line launches: the package (npx, uvx, pip, docker), its
//! version pin, its registry, and how to write a pinned spec back.

use std::str::FromStr;

use url::Url;

/// Where a package comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ecosystem {
    Npm,
    PyPi,
    Docker,
}

/// A package named on a command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub ecosystem: Ecosystem,
    /// Its name without version (`@scope/name`, `mcp-server-fetch`, `ghcr.io/org/image`).
    pub name: String,
    /// The version or tag as written (`1.2.3`, `latest`); `None` when none is given.
    pub version: Option<String>,
    /// A Docker image digest (`sha256:...`).
    pub digest: Option<String>,
    /// Which argument holds the spec.
    pub arg_index: usize,
    /// The registry named on the command line (`--registry`, `--index-url`), if any.
    pub registry: Option<String>,
    /// What precedes the spec inside its argument (`--package=`), kept when pinning.
    pub prefix: String,
}

impl Package {
    fn new(
        ecosystem: Ecosystem,
        (name, version): (String, Option<String>),
        arg_index: usize,
        registry: Option<String>,
    ) -> Self {
        Package {
            ecosystem,
            name,
            version,
            digest: None,
            arg_index,
            registry,
            prefix: String::new(),
        }
    }

    /// An exact version is given (for npm a full semver version, prerelease and build
    /// included, not a range or a tag like `latest`; for PyPI `==` or `===` a valid PEP 440
    /// version, not `==1.*`), or for Docker a digest.
    pub fn pinned(&self) -> bool {
        match (self.ecosystem, self.version.as_deref()) {
            (Ecosystem::Docker, _) => self.digest.is_some(),
            (_, None) => false,
            // npm takes `v1.2.3` and `=1.2.3` for the exact version too.
            (Ecosystem::Npm, Some(v)) => {
                let v = v.trim();
                let v = v.strip_prefix('=').unwrap_or(v);
                let v = v.strip_prefix('v').unwrap_or(v);
                semver::Version::parse(v).is_ok()
            }
            // `===` is arbitrary equality: one exact string, whatever its shape (PEP 440
            // leaves it unparsed, and so does pep440_rs).
            (Ecosystem::PyPi, Some(v)) if v.starts_with('=') => {
                let exact = v[1..].trim();
                !exact.is_empty() && !exact.contains([',', ' ', '*'])
            }
            (Ecosystem::PyPi, Some(v)) => {
                // `version` is what followed `==` or uv's `@`, or
                // a whole specifier that is no pin (`>=1`, `~=1.2`, `!=1.0`).
                let spec = if v.starts_with(['<', '>', '~', '!']) {
                    v.to_string()
                } else {
                    format!("=={v}")
                };
                pep440_rs::VersionSpecifiers::from_str(spec.trim()).is_ok_and(|specs| {
                    specs.iter().any(|s| {
                        matches!(
                            s.operator(),
                            pep440_rs::Operator::Equal | pep440_rs::Operator::ExactEqual
                        )
                    })
                })
            }
        }
    }

    /// The registry host the package comes from (with its port when one is given).
    pub fn registry_host(&self) -> String {
        if let Some(r) = &self.registry {
            let r = r.trim();
            // `--registry` takes a URL; a bare host (`npm.example.com/path`) is read as https.
            let parsed = Url::parse(r)
                .ok()
                .filter(|u| u.has_host())
                .or_else(|| Url::parse(&format!("https://{r}")).ok());
            return match parsed
                .as_ref()
                .and_then(|u| u.host_str().map(|h| (h, u.port())))
            {
                Some((host, Some(port))) => format!("{host}:{port}"),
                Some((host, None)) => host.to_string(),
                None => r.to_string(),
            };
        }
        match self.ecosystem {
            Ecosystem::Npm => "registry.npmjs.org".into(),
            Ecosystem::PyPi => "pypi.org".into(),
            Ecosystem::Docker => {
                let first = self.name.split('/').next().unwrap_or("");
                if self.name.contains('/')
                    && (first.contains('.') || first.contains(':') || first == "localhost")
                {
                    first.to_string()
                } else {
                    "docker.io".into()
                }
            }
        }
    }
}

/// The base name of a command (`/usr/bin/npx` -> `npx`, `npx.cmd` -> `npx`).
pub fn base(command: &str) -> String {
    let name = command.rsplit(['/', '\\']).next().unwrap_or(command);
    name.trim_end_matches(".cmd")
        .trim_end_matches(".exe")
        .to_string()
}

/// Values that stand for something else (`${input:x}`, `${env:X}`, `$X`, `<your-key>`).
pub fn is_placeholder(v: &str) -> bool {
    let v = v.trim();
    (v.starts_with("${") && v.ends_with('}'))
        || (v.starts_with('$')
            && v[1..]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
            && v.len() > 1)
        || (v.starts_with('<') && v.ends_with('>'))
        || (v.starts_with("{{") && v.ends_with("}}"))
        || v.to_ascii_lowercase().contains("your")
        || v.chars()
            .all(|c| c == 'x' || c == 'X' || c == '*' || c == '.')
}

/// Splits an npm spec into name and version: `@scope/pkg@1.2.3`, `pkg@latest`, `pkg`.
fn split_npm(spec: &str) -> (String, Option<String>) {
    let (scope, rest) = match spec.strip_prefix('@') {
        Some(r) => ("@", r),
        None => ("", spec),
    };
    match rest.rsplit_once('@') {
        Some((name, version)) if !name.is_empty() => {
            (format!("{scope}{name}"), Some(version.to_string()))
        }
        _ => (spec.to_string(), None),
    }
}

/// Splits a Python requirement: `pkg==1.2`, `pkg@1.2` (uv), `pkg>=1`, `pkg`.
fn split_py(spec: &str) -> (String, Option<String>) {
    if let Some((n, v)) = spec.split_once("==") {
        return (n.to_string(), Some(v.to_string()));
    }
    if let Some((n, v)) = spec.split_once('@') {
        return (n.to_string(), Some(v.trim().to_string()));
    }
    match spec.find(['>', '<', '~', '!']) {
        Some(at) => (spec[..at].to_string(), Some(spec[at..].to_string())),
        None => (spec.to_string(), None),
    }
}

/// Docker: `image[:tag][@sha256:...]`.
fn split_docker(spec: &str) -> (String, Option<String>, Option<String>) {
    let (rest, digest) = match spec.split_once('@') {
        Some((r, d)) => (r, Some(d.to_string())),
        None => (spec, None),
    };
    // A tag is after the last ':' that follows the last '/'.
    let slash = rest.rfind('/').map_or(0, |i| i + 1);
    match rest[slash..].rfind(':') {
        Some(at) => (
            rest[..slash + at].to_string(),
            Some(rest[slash + at + 1..].to_string()),
            digest,
        ),
        None => (rest.to_string(), None, digest),
    }
}

/// Flags of `npx`/`uvx`/`pip install` that take a value.
fn takes_value(flag: &str) -> bool {
    matches!(
        flag,
        "-p" | "--package"
            | "--registry"
            | "--cache"
            | "--from"
            | "--with"
            | "--python"
            | "-i"
            | "--index-url"
            | "--extra-index-url"
            | "--index"
            | "-c"
            | "--call"
    )
}

/// Flags of `docker run` that take a value.
fn docker_takes_value(flag: &str) -> bool {
    matches!(
        flag,
        "-e" | "--env"
            | "-v"
            | "--volume"
            | "--name"
            | "-p"
            | "--publish"
            | "--network"
            | "--net"
            | "--mount"
            | "-w"
            | "--workdir"
            | "-u"
            | "--user"
            | "--entrypoint"
            | "--env-file"
            | "-l"
            | "--label"
            | "--platform"
            | "--pull"
            | "-m"
            | "--memory"
            | "--cpus"
            | "--add-host"
            | "--cap-add"
            | "--cap-drop"
            | "--device"
            | "-h"
            | "--hostname"
            | "--restart"
            | "--security-opt"
    )
}

/// The registry named by a flag (`--registry X`, `--registry=X`, `--index-url X`).
fn registry_flag(args: &[String]) -> Option<String> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        for flag in ["--registry", "--index-url", "-i", "--index"] {
            if a == flag {
                return it.next().cloned();
            }
            if let Some(v) = a.strip_prefix(&format!("{flag}=")) {
                return Some(v.to_string());
            }
        }
    }
    None
}

/// The command line a wrapper runs: `mcp-coordinator ... exec ... -- CMD ARGS` and
/// `cmd /c CMD ARGS` run CMD. Returns that command, its arguments, and the index of its first
/// argument in `args`.
pub fn unwrap(command: &str, args: &[String]) -> Option<(String, Vec<String>, usize)> {
    let cmd = base(command);
    let at = if cmd == "mcp-coordinator" && args.iter().any(|a| a == "exec") {
        args.iter().position(|a| a == "--")? + 1
    } else if cmd == "cmd" {
        args.iter().position(|a| a.eq_ignore_ascii_case("/c"))? + 1
    } else {
        return None;
    };
    let inner = args.get(at)?;
    Some((inner.clone(), args[at + 1..].to_vec(), at + 1))
}

/// The package a command line launches, if it launches one through a known runner (looking
/// through the exec and `cmd /c` wrappers). `arg_index` counts in `args`.
pub fn package(command: &str, args: &[String]) -> Option<Package> {
    if let Some((inner, inner_args, offset)) = unwrap(command, args) {
        return package(&inner, &inner_args).map(|mut p| {
            p.arg_index += offset;
            p
        });
    }
    let cmd = base(command);
    let registry = registry_flag(args);
    let first_positional = |args: &[String], start: usize, values: fn(&str) -> bool| {
        let mut i = start;
        while i < args.len() {
            let a = &args[i];
            if a == "--" {
                return args.get(i + 1).map(|_| i + 1);
            }
            if a.starts_with('-') {
                if !a.contains('=') && values(a) {
                    i += 1;
                }
                i += 1;
                continue;
            }
            return Some(i);
        }
        None
    };
    match cmd.as_str() {
        "npx" | "bunx" | "pnpx" => {
            // `-p pkg`, `--package pkg` or `--package=pkg` names the package explicitly.
            let named = args.iter().enumerate().find_map(|(j, a)| {
                if (a == "-p" || a == "--package") && j + 1 < args.len() {
                    Some((j + 1, args[j + 1].as_str(), ""))
                } else {
                    a.strip_prefix("--package=")
                        .map(|spec| (j, spec, "--package="))
                }
            });
            if let Some((j, spec, prefix)) = named {
                let mut p = Package::new(Ecosystem::Npm, split_npm(spec), j, registry);
                p.prefix = prefix.into();
                return Some(p);
            }
            let i = first_positional(args, 0, takes_value)?;
            Some(Package::new(
                Ecosystem::Npm,
                split_npm(&args[i]),
                i,
                registry,
            ))
        }
        "uvx" | "pipx" => {
            let start = usize::from(cmd == "pipx" && args.first().is_some_and(|a| a == "run"));
            let mut it = args.iter().enumerate();
            while let Some((_, a)) = it.next() {
                if a == "--from"
                    && let Some((j, spec)) = it.next()
                {
                    return Some(Package::new(Ecosystem::PyPi, split_py(spec), j, registry));
                }
            }
            let i = first_positional(args, start, takes_value)?;
            Some(Package::new(
                Ecosystem::PyPi,
                split_py(&args[i]),
                i,
                registry,
            ))
        }
        "uv" if args.first().is_some_and(|a| a == "tool")
            && args.get(1).is_some_and(|a| a == "run") =>
        {
            let i = first_positional(args, 2, takes_value)?;
            Some(Package::new(
                Ecosystem::PyPi,
                split_py(&args[i]),
                i,
                registry,
            ))
        }
        "pip" | "pip3" | "python" | "python3" => {
            let at = args.iter().position(|a| a == "install")?;
            let i = first_positional(args, at + 1, takes_value)?;
            Some(Package::new(
                Ecosystem::PyPi,
                split_py(&args[i]),
                i,
                registry,
            ))
        }
        "docker" | "podman" => {
            let at = args.iter().position(|a| a == "run")?;
            let i = first_positional(args, at + 1, docker_takes_value)?;
            let (name, version, digest) = split_docker(&args[i]);
            let mut p = Package::new(Ecosystem::Docker, (name, version), i, None);
            p.digest = digest;
            Some(p)
        }
        _ => None,
    }
}

/// The spec that pins `pkg` to `version` (for Docker, `version` is a tag or a digest).
pub fn pinned_spec(pkg: &Package, version: &str) -> String {
    let spec = match pkg.ecosystem {
        Ecosystem::Npm => format!("{}@{version}", pkg.name),
        Ecosystem::PyPi => format!("{}=={version}", pkg.name),
        Ecosystem::Docker => {
            if version.starts_with("sha256:") {
                match &pkg.version {
                    Some(tag) => format!("{}:{tag}@{version}", pkg.name),
                    None => format!("{}@{version}", pkg.name),
                }
            } else {
                format!("{}:{version}", pkg.name)
            }
        }
    };
    format!("{}{spec}", pkg.prefix)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn packages_are_found_and_pins_judged() {
        let p = package("npx", &s(&["-y", "@modelcontextprotocol/server-github"])).unwrap();
        assert_eq!(
            (p.name.as_str(), p.version.as_deref(), p.arg_index),
            ("@modelcontextprotocol/server-github", None, 1)
        );
        assert!(!p.pinned());
        let p = package("npx", &s(&["-y", "@scope/x@1.2.3"])).unwrap();
        assert!(p.pinned());
        assert_eq!(pinned_spec(&p, "2.0.0"), "@scope/x@2.0.0");
        assert!(!package("npx", &s(&["x@latest"])).unwrap().pinned());
        assert!(!package("npx", &s(&["x@^1.2"])).unwrap().pinned());
        let p = package("uvx", &s(&["mcp-server-fetch"])).unwrap();
        assert!(!p.pinned());
        assert!(
            package("uvx", &s(&["mcp-server-fetch==0.6.2"]))
                .unwrap()
                .pinned()
        );
        assert!(
            package("uvx", &s(&["--from", "x==1.0", "x-cmd"]))
                .unwrap()
                .pinned()
        );
        let p = package(
            "docker",
            &s(&[
                "run",
                "-i",
                "--rm",
                "-e",
                "TOKEN",
                "ghcr.io/github/github-mcp-server",
            ]),
        )
        .unwrap();
        assert_eq!(p.name, "ghcr.io/github/github-mcp-server");
        assert_eq!(p.registry_host(), "ghcr.io");
        assert!(!p.pinned());
        let p = package("docker", &s(&["run", "mcp/fetch:1.0@sha256:abc"])).unwrap();
        assert!(p.pinned());
        assert_eq!(p.registry_host(), "docker.io");
        let p = package("python", &s(&["-m", "pip", "install", "mcp-thing>=1"])).unwrap();
        assert!(!p.pinned());
        assert!(package("node", &s(&["server.js"])).is_none());
    }

    #[test]
    fn npm_pins_are_exact_semver_versions() {
        let pinned = |spec: &str| package("npx", &s(&["-y", spec])).unwrap().pinned();
        for yes in [
            "pkg@1.4.0-fix.2",
            "pkg@1.0.0+build.5",
            "@scope/x@1.2.3-rc.1",
            "@scope/x@2025.4.8",
            "pkg@v1.2.3",
            "pkg@=1.2.3",
        ] {
            assert!(pinned(yes), "{yes} is pinned");
        }
        for no in [
            "pkg",
            "pkg@latest",
            "pkg@next",
            "pkg@1.2",
            "pkg@1",
            "pkg@1.x",
            "pkg@1.2.*",
            "pkg@^1.2.3",
            "pkg@~1.2.3",
            "pkg@>=1.0.0",
            "pkg@1.2.3 - 2.0.0",
            "pkg@1.2.3 || 1.2.4",
            "@scope/x",
            "pkg@",
        ] {
            assert!(!pinned(no), "{no} is not pinned");
        }
    }

    #[test]
    fn pypi_pins_are_exact_pep440_versions() {
        let pinned = |spec: &str| package("uvx", &s(&[spec])).unwrap().pinned();
        for yes in [
            "mcp-server-fetch==0.6.2",
            "pkg==1.0rc1",
            "pkg==1.0.post1",
            "pkg==2!1.0",
            "pkg==1.0+local.7",
            "pkg===1.0-odd",
            "pkg@0.6.2",
            "pkg[extra]==1.0",
        ] {
            assert!(pinned(yes), "{yes} is pinned");
        }
        for no in [
            "pkg",
            "pkg==1.*",
            "pkg>=1.0",
            "pkg~=1.2",
            "pkg!=1.0",
            "pkg@latest",
            "pkg==latest",
            "pkg<2",
        ] {
            assert!(!pinned(no), "{no} is not pinned");
        }
    }

    #[test]
    fn registry_hosts_come_from_the_url() {
        let host = |flag: &str| {
            package("npx", &s(&[flag, "pkg@1.0.0"]))
                .unwrap()
                .registry_host()
        };
        assert_eq!(
            host("--registry=HTTPS://NPM.Example.com/path/"),
            "npm.example.com"
        );
        assert_eq!(
            host("--registry=http://user:pw@npm.example.com:8443/"),
            "npm.example.com:8443"
        );
        assert_eq!(host("--registry=npm.example.com/mirror"), "npm.example.com");
        assert_eq!(
            host("--registry=https://npm.example.com:443/"),
            "npm.example.com"
        );
    }

    #[test]
    fn placeholders() {
        for v in [
            "${input:token}",
            "${env:X}",
            "$GITHUB_TOKEN",
            "<your-token>",
            "YOUR_API_KEY",
            "xxxx",
        ] {
            assert!(is_placeholder(v), "{v}");
        }
        assert!(!is_placeholder("ghp_abcdefghijklmnopqrstuvwxyz0123456789"));
    }
}
