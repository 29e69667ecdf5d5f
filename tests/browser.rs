//! The web client in headless Chromium (playwright-core), against node processes sharing
//! MariaDB and Redis:
//! - two pages, two users, on two nodes: each sees the other's message on screen, and
//!   script payloads show as text (`tests/browser/chat.mjs`);
//! - two people on two nodes, the conversation started by username: each page shows the
//!   other's name in the list, the title and on messages (`tests/browser/names.mjs`);
//! - a page behind HAProxy across a drain of its node: `reconnecting`, then `connected`,
//!   and a message sent after the drain shows up (`tests/browser/drain.mjs`).

mod common;

use std::process::Command;

use common::fleet::{self, Ports};

/// Fails the test unless Chromium and playwright-core are installed.
fn require_browser() {
    let ready = std::path::Path::new("tests/browser/node_modules/playwright-core").exists()
        && std::path::Path::new("/usr/bin/chromium").exists();
    assert!(ready, "playwright-core or chromium missing (scripts/services.sh installs them)");
    common::require_program("node");
}

/// Runs a browser scenario script and checks its summary line.
async fn scenario(script: &'static str, args: Vec<String>) {
    let out =
        tokio::task::spawn_blocking(move || Command::new("node").arg(script).args(args).output().expect("run node"))
            .await
            .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{script} failed");
    assert!(stdout.contains(", 0 failed"), "{script}: no clean summary line");
}

/// Runs a two-page scenario against two node processes sharing MariaDB and Redis.
async fn on_two_nodes(script: &'static str) {
    require_browser();
    let (db, redis) = (common::mysql_url(), common::redis_url());
    let env = vec![("DATABASE_URL".to_owned(), db), ("REDIS_URL".to_owned(), redis)];
    let mut n1 = common::Proc::spawn(&["--node-id".into(), "b1".into()], &env);
    n1.ready().await;
    let mut n2 = common::Proc::spawn(&["--node-id".into(), "b2".into()], &env);
    n2.ready().await;
    scenario(script, vec![format!("http://{}", n1.addr), format!("http://{}", n2.addr)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs MariaDB, Redis, Chromium and playwright-core; scripts/test runs it"]
async fn two_browsers_on_two_nodes_chat() {
    on_two_nodes("tests/browser/chat.mjs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs MariaDB, Redis, Chromium and playwright-core; scripts/test runs it"]
async fn two_people_find_each_other_by_name() {
    on_two_nodes("tests/browser/names.mjs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs MariaDB, Redis, HAProxy, Chromium and playwright-core; scripts/test runs it"]
async fn the_page_reconnects_across_a_drain() {
    require_browser();
    common::require_program("haproxy");
    let (db, redis) = (common::mysql_url(), common::redis_url());
    let env = vec![("DATABASE_URL".to_owned(), db), ("REDIS_URL".to_owned(), redis)];
    // The config names three servers; the third stays down.
    let ports = [Ports::free(), Ports::free(), Ports::free()];
    let mut nodes: Vec<_> = ["node1", "node2"]
        .iter()
        .enumerate()
        .map(|(i, name)| fleet::node(name, &ports[i], &["--drain-timeout", "10s"], &env))
        .collect();
    for n in &mut nodes {
        n.ready().await;
    }
    let hp = fleet::haproxy(&ports).await;
    hp.wait_all_up(&["node1", "node2"]).await;
    let mut args = vec![format!("http://{}", hp.addr)];
    args.extend(nodes.iter().map(|n| format!("http://{}", n.admin)));
    scenario("tests/browser/drain.mjs", args).await;
}
