//! `switchboard --check-config` (docs/configuration.md): validates the configuration and prints
//! every setting with secrets masked, exit 0; or one line and exit 64 when it is invalid. It
//! connects to nothing and binds nothing, so it runs here without any service.

use std::process::{Command, Output};

/// Runs the binary with `--check-config`, these flags and only these environment variables.
fn check(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("--check-config")
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("run switchboard")
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_valid_configuration_is_printed_with_secrets_masked() {
    let out = check(
        &[
            // Unreachable and unbindable on purpose: a check that connected or bound would fail.
            "--listen",
            "192.0.2.1:8000",
            "--database-url",
            "mysql://app:hunter2@db.invalid:3306/switchboard",
            "--token-secret",
            "flag-secret-0123456789",
        ],
        &[
            ("REDIS_URL", "redis://:redis-pw-42@cache.invalid:6379"),
            ("MONGODB_URL", "mongodb://inbox:mongo-pw-42@mongo.invalid:27017/sb"),
            ("SWITCHBOARD_TOKEN_VERIFY_SECRET", "env-secret-0123456789"),
            ("SWITCHBOARD_HEARTBEAT_INTERVAL", "2s"),
            ("SWITCHBOARD_COMMIT_INTERVAL", "1000us"),
        ],
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    for secret in ["hunter2", "redis-pw-42", "mongo-pw-42", "flag-secret", "env-secret"] {
        assert!(!stdout.contains(secret) && !stderr.contains(secret), "{secret} printed:\n{stdout}{stderr}");
    }
    let value = |flag: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(flag).filter(|rest| rest.starts_with(' ')).map(str::trim))
            .unwrap_or_else(|| panic!("{flag} not printed:\n{stdout}"))
            .to_owned()
    };
    assert_eq!(value("--listen"), "192.0.2.1:8000");
    assert_eq!(value("--database-url"), "mysql://app:***@db.invalid:3306/switchboard");
    assert_eq!(value("--redis-url"), "redis://:***@cache.invalid:6379");
    assert_eq!(value("--mongodb-url"), "mongodb://inbox:***@mongo.invalid:27017/sb");
    assert_eq!(value("--token-secret"), "***");
    assert_eq!(value("--token-verify-secret"), "***");
    assert_eq!(value("--heartbeat-interval"), "2s");
    assert_eq!(value("--heartbeat-timeout"), "15s");
    assert_eq!(value("--commit-interval"), "1ms");
    assert_eq!(value("--drain-timeout"), "5m");
    assert_eq!(value("--inbox-ttl"), "7days");
    let flags = stdout.lines().filter(|l| l.starts_with("--")).count();
    assert!(flags >= 30, "every setting printed, got {flags}:\n{stdout}");
}

#[test]
fn an_invalid_configuration_is_one_line_and_exit_64() {
    for (args, says) in [
        (&["--heartbeat-interval", "5s", "--heartbeat-timeout", "1s"][..], "--heartbeat-timeout"),
        (&["--drain-timeout", "300"][..], "unit"),
        (&["--database-url", "postgres://u:pw@h/db"][..], "DATABASE_URL"),
        (&["--token-secret", "short"][..], "--token-secret"),
    ] {
        let out = check(args, &[]);
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(64), "{args:?}: stdout:\n{stdout}\nstderr:\n{stderr}");
        assert!(stdout.is_empty(), "{args:?}: printed a configuration:\n{stdout}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: not one line:\n{stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

#[test]
fn the_environment_is_checked_too() {
    let out = check(&[], &[("SWITCHBOARD_PRESENCE_TTL", "100ms"), ("SWITCHBOARD_ROUTING", "node")]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("REDIS_URL"), "{stderr}");
}
