//! `rampart check`: every shipped config is valid (exit 0) and every fixture in
//! `conf/invalid/` fails with exit 64 and exactly the messages written in its
//! `# expect:` lines.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn check(file: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rampart"))
        .current_dir(workspace_root())
        .args(["check", "--config"])
        .arg(file)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn toml_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(workspace_root().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| p.strip_prefix(workspace_root()).unwrap().to_path_buf())
        .collect();
    files.sort();
    files
}

#[test]
fn every_shipped_config_is_valid() {
    let mut files = toml_files("conf");
    files.extend(toml_files("deploy/compose"));
    assert!(files.len() >= 3);
    for file in files {
        let (code, stdout, stderr) = check(&file);
        assert_eq!(code, 0, "{}: {stderr}", file.display());
        assert_eq!(stdout, format!("{}: ok\n", file.display()));
    }
}

#[test]
fn every_invalid_fixture_fails_with_its_exact_messages() {
    let files = toml_files("conf/invalid");
    assert!(files.len() >= 15, "one fixture per kind of error");
    for file in files {
        let text = std::fs::read_to_string(workspace_root().join(&file)).unwrap();
        let expected: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect: "))
            .collect();
        assert!(
            !expected.is_empty(),
            "{} has no # expect: line",
            file.display()
        );
        let (code, stdout, stderr) = check(&file);
        assert_eq!(code, 64, "{} must fail with exit 64", file.display());
        assert_eq!(stdout, "");
        let got: Vec<&str> = stderr.lines().collect();
        assert_eq!(got, expected, "{}", file.display());
    }
}

#[test]
fn a_missing_file_is_reported_with_exit_64() {
    let (code, _, stderr) = check(Path::new("conf/does-not-exist.toml"));
    assert_eq!(code, 64);
    assert_eq!(
        stderr,
        "conf/does-not-exist.toml: cannot read the file: No such file or directory (os error 2)\n"
    );
}
