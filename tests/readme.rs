//! Every command in the README is exercised: the fenced `sh` blocks are run (the demo with
//! `--once`, the verify examples with real signatures) or checked (scripts exist and are
//! executable), and every `zenedge <verb>` the README mentions is a verb the binary knows.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap()
}

/// The command lines of the README's ```sh blocks, continuations joined, comments dropped.
fn sh_commands(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_sh = false;
    let mut pending = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_sh = !in_sh && line.trim() == "```sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        let line = line.split(" # ").next().unwrap_or("").trim_end();
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            pending.push_str(head);
            continue;
        }
        pending.push_str(line);
        out.push(std::mem::take(&mut pending).trim().to_string());
    }
    out
}

#[test]
fn every_sh_command_in_the_readme_runs_or_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let commands = sh_commands(&readme());
    assert!(commands.len() >= 5, "{commands:?}");
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body.json");
    std::fs::write(&body, br#"{"id":"evt_1","event":"edge.test","data":{}}"#).unwrap();
    let key = zenedge::signing::Key::from_secret("readme-secret").unwrap();
    let raw = std::fs::read(&body).unwrap();
    let v1 = key.sign_v1("evt_1", 1_700_000_000, &raw);
    for cmd in &commands {
        if let Some(rest) = cmd.strip_prefix("cargo run --release -- ") {
            // The demo, for real (--once so that it ends).
            assert!(
                rest.starts_with("demo"),
                "unexpected cargo run in README: {cmd}"
            );
            let out = Command::new(common::bin())
                .args(["demo", "--once"])
                .output()
                .unwrap();
            assert_eq!(
                out.status.code(),
                Some(0),
                "{cmd}\n--- stdout\n{}\n--- stderr\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        } else if let Some(script) = cmd
            .split_whitespace()
            .next()
            .filter(|w| w.starts_with("scripts/"))
        {
            let path = root.join(script);
            let mode = std::os::unix::fs::PermissionsExt::mode(
                &std::fs::metadata(&path).unwrap().permissions(),
            );
            assert!(mode & 0o111 != 0, "{script} is not executable");
        } else if let Some(rest) = cmd.strip_prefix("cargo test --test ") {
            let name = rest.split_whitespace().next().unwrap();
            assert!(
                root.join("tests").join(format!("{name}.rs")).exists(),
                "{cmd}"
            );
        } else if cmd.starts_with("zenedge ") {
            let line = cmd.replace("\"v1,…\"", &format!("\"{v1}\""));
            let out = Command::new("sh")
                .arg("-c")
                .arg(&line)
                .current_dir(dir.path())
                .env(
                    "PATH",
                    format!(
                        "{}:{}",
                        Path::new(common::bin()).parent().unwrap().display(),
                        std::env::var("PATH").unwrap()
                    ),
                )
                .env("SECRET", "readme-secret")
                .env("X_WEBHOOK_SIGNATURE", key.sign_hex(&raw))
                .env("WEBHOOK_ID", "evt_1")
                .env("WEBHOOK_TIMESTAMP", "1700000000")
                .env_remove("ZENEDGE_CONFIG")
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert_eq!(
                (out.status.code(), stdout.trim()),
                (Some(0), "valid"),
                "{cmd}"
            );
        } else {
            panic!("README command not covered by this test: {cmd}");
        }
    }
}

#[test]
fn every_zenedge_verb_the_readme_names_exists() {
    let text = readme();
    let mut verbs = BTreeSet::new();
    for (i, _) in text.match_indices("zenedge ") {
        let rest = &text[i + "zenedge ".len()..];
        let words: Vec<&str> = rest
            .split(|c: char| c.is_whitespace() || c == '`' || c == '|')
            .take(2)
            .collect();
        let Some(verb) = words.first().filter(|w| {
            w.starts_with(|c: char| c.is_ascii_lowercase())
                && w.chars().all(|c| c.is_ascii_lowercase() || c == '-')
        }) else {
            continue;
        };
        let mut path = vec![verb.to_string()];
        if *verb == "queue" {
            if let Some(sub) = words
                .get(1)
                .filter(|w| ["list", "show", "retry"].contains(w))
            {
                path.push(sub.to_string());
            }
        }
        verbs.insert(path);
    }
    // Prose like "zenedge runs" is not a command: only check what looks like one.
    let known_prose = [
        "on", "is", "runs", "sends", "keeps", "to", "as", "and", "the",
    ];
    let mut checked = 0;
    for path in verbs {
        if known_prose.contains(&path[0].as_str()) {
            continue;
        }
        let out = Command::new(common::bin())
            .args(&path)
            .arg("--help")
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "README names `zenedge {}`, which is not a verb",
            path.join(" ")
        );
        checked += 1;
    }
    assert!(checked >= 12, "only {checked} verbs found in the README");
}
