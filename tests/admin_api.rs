//! The server API on the admin listener: publish into a group or to a user, as a user or the
//! system, through the durable send path (live, history, inbox replay, idempotent retries);
//! tokens for backends; the node's info. None of it answers on the public listener.

mod common;

use std::time::Duration;

use serde_json::json;
use switchboard::client::{Api, WsEvent, connect_ws};

async fn next_message(ws: &mut switchboard::client::WsConn) -> serde_json::Value {
    loop {
        match ws.next(Duration::from_secs(5)).await {
            Some(WsEvent::Json(v)) if v["type"] == "message" => return v,
            Some(_) => continue,
            None => panic!("no message frame"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_takes_the_send_path_for_users_and_the_system() {
    let node = common::embedded(&[]).await;
    let (api, admin) = (node.api(), Api::new(node.admin));
    let u = common::users(&api, 3).await;
    let g = api.create_group(u[0], &[u[1], u[2]]).await.expect("group");
    let mut ws = connect_ws(node.addr, u[1], false).await.expect("ws");

    // On behalf of a user, into a group: live to the others.
    let (status, sent) = admin
        .post_json("/admin/publish", &json!({ "sender_id": u[0], "group_id": g, "content": "from the backend" }))
        .await
        .expect("publish");
    assert_eq!(status, 200, "{sent}");
    let live = next_message(&mut ws).await;
    assert_eq!((live["content"].as_str(), live["sender_id"].as_i64()), (Some("from the backend"), Some(u[0])));
    assert_eq!(live["message_id"], sent["message_id"]);

    // From the system (no sender_id): sender 0, delivered to every member.
    let (status, sys) = admin
        .post_form(
            "/admin/publish",
            &[("group_id", &g.to_string()), ("content", "maintenance at 5"), ("client_msg_id", "m-1")],
        )
        .await
        .expect("system");
    assert_eq!(status, 200, "{sys}");
    let live = next_message(&mut ws).await;
    assert_eq!((live["content"].as_str(), live["sender_id"].as_i64()), (Some("maintenance at 5"), Some(0)));
    // A retry with the same client_msg_id is the same message.
    let (_, again) = admin
        .post_form(
            "/admin/publish",
            &[("group_id", &g.to_string()), ("content", "maintenance at 5"), ("client_msg_id", "m-1")],
        )
        .await
        .expect("retry");
    assert_eq!((again["message_id"].clone(), again["duplicate"].as_bool()), (sys["message_id"].clone(), Some(true)));

    // To a user: their one-to-one conversation with the sender; u[2] is offline and gets it
    // from the inbox on connect.
    let (status, direct) = admin
        .post_json("/admin/publish", &json!({ "sender_id": u[0], "receiver_id": u[2], "content": "just you" }))
        .await
        .expect("direct");
    assert_eq!(status, 200, "{direct}");
    let mut late = connect_ws(node.addr, u[2], false).await.expect("ws");
    let mut replayed = Vec::new();
    for _ in 0..3 {
        replayed.push(next_message(&mut late).await["content"].as_str().map(str::to_owned));
    }
    assert!(replayed.contains(&Some("just you".into())), "{replayed:?}");
    let (_, history) = api.get(&format!("/groups/{}/messages", direct["group_id"])).await.expect("history");
    assert_eq!(history[0]["content"], "just you");

    // Refusals.
    for (body, status, code) in [
        (json!({ "receiver_id": u[1], "content": "x" }), 400, "invalid_target"),
        (json!({ "group_id": g, "content": " " }), 400, "empty_content"),
        (json!({ "content": "x" }), 400, "invalid_target"),
        (json!({ "group_id": 999_999, "content": "x" }), 404, "group_not_found"),
    ] {
        let (got, reply) = admin.post_json("/admin/publish", &body).await.expect("refused");
        assert_eq!((got.as_u16(), reply["code"].as_str()), (status, Some(code)), "{body}");
    }
    let outsider = common::users(&api, 1).await[0];
    let (got, reply) = admin
        .post_json("/admin/publish", &json!({ "sender_id": outsider, "group_id": g, "content": "x" }))
        .await
        .expect("403");
    assert_eq!((got.as_u16(), reply["code"].as_str()), (403, Some("not_a_member")));
    // Not on the public listener.
    let (got, _) = api.post_json("/admin/publish", &json!({ "group_id": g, "content": "x" })).await.expect("public");
    assert_eq!(got, 404);
    assert_eq!(api.get("/admin/info").await.expect("public").0, 404);
    assert_eq!(admin.get("/admin/publish").await.expect("method").0, 405);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_reports_node_phase_sessions_routing_and_backends() {
    let node = common::embedded(&[]).await;
    let (api, admin) = (node.api(), Api::new(node.admin));
    let u = common::users(&api, 1).await;
    let _ws = connect_ws(node.addr, u[0], false).await.expect("ws");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, info) = admin.get("/admin/info").await.expect("info");
    assert_eq!(status, 200);
    assert_eq!(info["node"], "test");
    assert_eq!(info["phase"], "ready");
    assert_eq!(info["sessions"], 1);
    assert_eq!(info["routing"], "group");
    assert_eq!(info["token_mode"], false);
    assert_eq!(info["backends"]["store"], json!({ "kind": "sqlite", "status": "up" }));
    assert_eq!(info["backends"]["inbox"], json!({ "kind": "sql", "status": "up" }));
    assert_eq!(info["backends"]["backplane"], json!({ "kind": "memory", "status": "up" }));
    let (status, reply) = admin.post_json("/admin/token", &json!({ "user_id": u[0] })).await.expect("token");
    assert_eq!((status.as_u16(), reply["code"].as_str()), (409, Some("token_mode_off")));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_mint_tokens_that_the_public_routes_accept() {
    let node = common::embedded(&["--token-secret", "a-test-secret-of-enough-length"]).await;
    let (api, admin) = (node.api(), Api::new(node.admin));
    let (_, alice) = api.post_json("/register", &json!({ "username": common::unique("a") })).await.expect("register");
    let a = alice["user_id"].as_i64().expect("id");
    let (status, minted) = admin.post_json("/admin/token", &json!({ "user_id": a })).await.expect("token");
    assert_eq!(status, 200, "{minted}");
    let token = minted["token"].as_str().expect("token");
    let (status, _) = api.get(&format!("/users/{a}/groups?token={token}")).await.expect("groups");
    assert_eq!(status, 200);
    let (status, reply) = admin.post_json("/admin/token", &json!({ "user_id": 999_999 })).await.expect("unknown");
    assert_eq!((status.as_u16(), reply["code"].as_str()), (404, Some("user_not_found")));
    node.stop().await;
}
