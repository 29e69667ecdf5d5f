//! The web client in headless Chromium (playwright-core): two pages, two users, on two
//! nodes sharing MariaDB and Redis. Each sees the other's message on screen, and script
//! payloads show as text. The scenario lives in `tests/browser/chat.mjs`.

mod common;

use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browsers_on_two_nodes_chat() {
    let (Some(db), Some(redis)) = (common::mysql_url(), common::redis_url()) else { return };
    let ready = std::path::Path::new("tests/browser/node_modules/playwright-core").exists()
        && std::path::Path::new("/usr/bin/chromium").exists();
    if !ready {
        assert!(!common::services_required(), "playwright-core or chromium missing (run scripts/services.sh)");
        eprintln!("note: playwright-core or chromium missing; skipping");
        return;
    }
    let env = vec![("DATABASE_URL".to_owned(), db), ("REDIS_URL".to_owned(), redis)];
    let n1 = common::Proc::spawn(&["--node-id".into(), "b1".into()], &env);
    n1.ready().await;
    let n2 = common::Proc::spawn(&["--node-id".into(), "b2".into()], &env);
    n2.ready().await;
    let (u1, u2) = (format!("http://{}", n1.addr), format!("http://{}", n2.addr));
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node").arg("tests/browser/chat.mjs").arg(u1).arg(u2).output().expect("run node")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "browser scenario failed");
    assert!(stdout.contains(", 0 failed"), "no clean summary line");
}
