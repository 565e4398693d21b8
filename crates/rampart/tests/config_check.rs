//! `rampart check`: every shipped config is valid (exit 0) and every fixture in
//! `conf/invalid/` fails with exit 64 and exactly the messages written in its
//! `# expect:` lines. `check` does no DNS; `run` resolves origin names and
//! refuses one that does not resolve, with exit 64 too.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

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

#[test]
fn check_does_no_dns_and_run_refuses_an_origin_name_that_does_not_resolve() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rampart.toml");
    let port = rampart_testkit::free_port("127.0.0.1");
    let admin = rampart_testkit::free_port("127.0.0.1");
    // `.invalid` never resolves (RFC 6761).
    std::fs::write(
        &file,
        format!(
            r#"
[[listeners]]
address = "127.0.0.1:{port}"
[admin]
address = "127.0.0.1:{admin}"
[pools.web]
servers = ["127.0.0.1:9000", "nowhere.invalid:9000"]
[[routes]]
name = "all"
pool = "web"
"#
        ),
    )
    .unwrap();
    let (code, stdout, stderr) = check(&file);
    assert_eq!((code, stderr.as_str()), (0, ""));
    assert_eq!(stdout, format!("{}: ok\n", file.display()));

    // No admin token: should the name resolve after all, `run` stops at the
    // token instead of serving.
    let mut child = Command::new(env!("CARGO_BIN_EXE_rampart"))
        .args(["run", "--config"])
        .arg(&file)
        .env_remove("RAMPART_ADMIN_TOKEN")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("rampart run did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(64), "{stderr}");
    let prefix = format!(
        "{}: pools.web.servers[1]: \"nowhere.invalid:9000\" cannot be resolved: ",
        file.display()
    );
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with(&prefix), "{stderr}");
}
