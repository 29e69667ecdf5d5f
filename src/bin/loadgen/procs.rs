//! Parent and child processes. One process may hold fewer sockets than the file-descriptor
//! limit (20,000 here), and the crate forbids `unsafe`, so the tool cannot raise its own
//! limit: large runs split their clients over `--procs` children of the same binary.
//!
//! A child gets the parent's arguments plus `--shard I/N`. It talks on its standard streams,
//! one line each: it prints `@ <event> key=value ...` lines (anything else it prints goes to
//! the parent's stderr), and it reads commands (`drop`, `send`, `go <unix_ms>`, `stop`) from
//! stdin. EOF on stdin means stop.

use std::collections::HashMap;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use super::common::fields;

pub struct Children {
    kids: Vec<Kid>,
}

struct Kid {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Children {
    /// Starts `n` children with this process's arguments, minus `--procs`, plus `--shard i/n`
    /// and `extra`.
    pub fn spawn(n: usize, extra: &[String]) -> Result<Children, String> {
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let mut args: Vec<String> = Vec::new();
        let mut skip = false;
        let drop_flags = ["--procs", "--users-file"];
        for a in std::env::args().skip(1) {
            if skip {
                skip = false;
                continue;
            }
            if drop_flags.contains(&a.as_str()) {
                skip = true;
                continue;
            }
            if drop_flags.iter().any(|f| a.starts_with(&format!("{f}="))) {
                continue;
            }
            args.push(a);
        }
        let mut kids = Vec::new();
        for i in 0..n {
            let mut child = Command::new(&exe)
                .args(&args)
                .args(extra)
                .arg("--shard")
                .arg(format!("{i}/{n}"))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| format!("spawn child: {e}"))?;
            let stdin = child.stdin.take().ok_or("no stdin")?;
            let stdout = child.stdout.take().ok_or("no stdout")?;
            kids.push(Kid { child, stdin, lines: BufReader::new(stdout).lines() });
        }
        Ok(Children { kids })
    }

    pub fn pids(&self) -> Vec<u32> {
        self.kids.iter().filter_map(|k| k.child.id()).collect()
    }

    /// Waits for event `name` from every child; returns their fields in child order.
    pub async fn expect(&mut self, name: &str) -> Result<Vec<HashMap<String, String>>, String> {
        let mut out = Vec::new();
        for (i, kid) in self.kids.iter_mut().enumerate() {
            loop {
                match kid.lines.next_line().await {
                    Ok(Some(line)) => {
                        if let Some(rest) = line.strip_prefix("@ ") {
                            let (event, body) = rest.split_once(' ').unwrap_or((rest, ""));
                            if event == name {
                                out.push(fields(body));
                                break;
                            }
                            if event == "error" {
                                return Err(format!("child {i}: {body}"));
                            }
                        } else {
                            eprintln!("[child {i}] {line}");
                        }
                    }
                    Ok(None) | Err(_) => return Err(format!("child {i} ended before `{name}`")),
                }
            }
        }
        Ok(out)
    }

    pub async fn tell(&mut self, command: &str) {
        for kid in &mut self.kids {
            let _ = kid.stdin.write_all(format!("{command}\n").as_bytes()).await;
            let _ = kid.stdin.flush().await;
        }
    }

    pub async fn wait(mut self) {
        for kid in &mut self.kids {
            let _ = kid.stdin.shutdown().await;
        }
        for mut kid in self.kids {
            if tokio::time::timeout(std::time::Duration::from_secs(15), kid.child.wait()).await.is_err() {
                let _ = kid.child.kill().await;
            }
        }
    }
}

/// A child's side: commands from stdin.
pub struct Commands {
    lines: Lines<BufReader<tokio::io::Stdin>>,
}

impl Commands {
    pub fn new() -> Self {
        Self { lines: BufReader::new(tokio::io::stdin()).lines() }
    }

    /// The next command line; "stop" on EOF.
    pub async fn next(&mut self) -> String {
        match self.lines.next_line().await {
            Ok(Some(line)) => line.trim().to_owned(),
            _ => "stop".into(),
        }
    }
}

/// Prints an event line for the parent.
pub fn emit(event: &str, body: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "@ {event} {body}");
    let _ = out.flush();
}

/// `i/n` of `--shard`.
pub fn parse_shard(s: &str) -> Result<(usize, usize), String> {
    let (i, n) = s.split_once('/').ok_or("--shard is I/N")?;
    let (i, n): (usize, usize) = (i.parse().map_err(|_| "bad I")?, n.parse().map_err(|_| "bad N")?);
    if n == 0 || i >= n {
        return Err("--shard needs I < N".into());
    }
    Ok((i, n))
}
