//! REST API tests (docs/api.md): every route with good and bad input, each part of the API as
//! its own test on the embedded node (`embedded::*`) and on MySQL + Redis
//! (`mysql_and_redis::*`, ignored under a plain `cargo test`; `scripts/test` runs them).

mod common;

use serde_json::{Value, json};
use switchboard::client::Api;

fn assert_error(res: (hyper::StatusCode, Value), status: u16, code: &str) {
    assert_eq!(res.0.as_u16(), status, "body: {}", res.1);
    assert_eq!(res.1["code"], code, "body: {}", res.1);
    assert!(res.1["detail"].as_str().is_some_and(|d| !d.is_empty()), "no detail: {}", res.1);
}

/// Each API test as its own test function, run on its own embedded node and, ignored under a
/// plain `cargo test`, on its own MySQL database and the shared Redis: a failure names the
/// part of the API and the backend (`embedded::bad_sends`, `mysql_and_redis::people`).
macro_rules! on_both_backends {
    ($($test:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let node = crate::common::embedded(&[]).await;
                    super::$test(&node.api()).await;
                    node.stop().await;
                }
            )*
        }

        mod mysql_and_redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[ignore = "needs MariaDB and Redis; scripts/test runs it"]
                async fn $test() {
                    let (db, redis) = (crate::common::mysql_url(), crate::common::redis_url());
                    let node = crate::common::start(&["--database-url", &db, "--redis-url", &redis]).await;
                    super::$test(&node.api()).await;
                    node.stop().await;
                }
            )*
        }
    };
}

on_both_backends!(
    registration,
    malformed_bodies,
    group_creation,
    pair_race,
    sending_by_group_and_by_receiver,
    idempotent_retries,
    bad_sends_are_refused,
    history_and_group_listing,
    people_by_id_and_by_name,
    routes,
);

/// Two fresh users, alice and bob, and their conversation.
struct Pair {
    alice: i64,
    bob: i64,
    group: i64,
}

async fn pair(api: &Api) -> Pair {
    let alice = api.register(&common::unique("alice")).await.expect("alice");
    let bob = api.register(&common::unique("bob")).await.expect("bob");
    let group = api.create_group(alice, &[bob]).await.expect("group");
    Pair { alice, bob, group }
}

async fn registration(api: &Api) {
    register(api).await;
}

async fn group_creation(api: &Api) {
    let (name, bob_name) = (common::unique("alice"), common::unique("bob"));
    let alice = api.register(&name).await.expect("alice");
    let bob = api.register(&bob_name).await.expect("bob");
    groups(api, (alice, &name), (bob, &bob_name)).await;
}

async fn sending_by_group_and_by_receiver(api: &Api) {
    let p = pair(api).await;
    sending(api, p.alice, p.bob, p.group).await;
}

async fn idempotent_retries(api: &Api) {
    let p = pair(api).await;
    idempotent_retry(api, p.alice, p.group).await;
}

async fn bad_sends_are_refused(api: &Api) {
    let p = pair(api).await;
    let outsider = api.register(&common::unique("outsider")).await.expect("outsider");
    bad_sends(api, p.alice, p.bob, outsider, p.group).await;
}

/// History after the sends of `sending`, and alice's two conversations.
async fn history_and_group_listing(api: &Api) {
    let p = pair(api).await;
    sending(api, p.alice, p.bob, p.group).await;
    history(api, p.alice, p.bob, p.group).await;
}

async fn people_by_id_and_by_name(api: &Api) {
    let (alice, name, bob, bob_name, sqli) = register(api).await;
    people(api, (alice, &name), (bob, &bob_name), &sqli).await;
}

/// Register: form and JSON, duplicates, bad names. Returns alice, bob and an odd name.
async fn register(api: &Api) -> (i64, String, i64, String, String) {
    let name = common::unique("alice");
    let (status, body) = api.post_form("/register", &[("username", &name)]).await.expect("register");
    assert_eq!(status, 200);
    assert_eq!(body["username"], name.as_str());
    let alice = body["user_id"].as_i64().expect("user_id");
    let bob_name = common::unique("bob");
    let (status, body) =
        api.post_json("/register", &json!({ "username": bob_name, "ignored": true })).await.expect("json");
    assert_eq!(status, 200, "{body}");
    let bob = body["user_id"].as_i64().expect("id");
    assert_error(api.post_form("/register", &[("username", &name)]).await.expect("dup"), 409, "username_taken");
    assert_error(api.post_form("/register", &[("username", "")]).await.expect("empty"), 400, "invalid_username");
    assert_error(api.post_form("/register", &[]).await.expect("missing"), 400, "invalid_username");
    assert_error(api.post_form("/register", &[("username", "a\u{7}b")]).await.expect("ctrl"), 400, "invalid_username");
    assert_error(
        api.post_form("/register", &[("username", &"x".repeat(65))]).await.expect("long"),
        400,
        "invalid_username",
    );
    let sqli = format!("{}'); DROP TABLE users; --", common::unique("s"));
    let (status, body) = api.post_form("/register", &[("username", &sqli)]).await.expect("sqli");
    assert_eq!((status.as_u16(), body["username"].as_str()), (200, Some(sqli.as_str())));
    (alice, name, bob, bob_name, sqli)
}

/// Malformed bodies are 4xx JSON, never 500.
async fn malformed_bodies(api: &Api) {
    let bad = hyper::Request::post("/register")
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{\"username\":")))
        .expect("req");
    assert_error(api.request(bad).await.expect("bad json"), 400, "invalid_json");
    let bad = hyper::Request::post("/register")
        .header("content-type", "text/xml")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"<x/>")))
        .expect("req");
    assert_error(api.request(bad).await.expect("xml"), 415, "unsupported_media_type");
}

/// Groups: the pair gets one group, from either side; unknown users are 404.
async fn groups(api: &Api, (alice, name): (i64, &str), (bob, bob_name): (i64, &str)) -> i64 {
    let (status, g) = api
        .post_form(
            "/create_group",
            &[("name", "ab"), ("created_by", &alice.to_string()), ("user_ids", &bob.to_string())],
        )
        .await
        .expect("create");
    assert_eq!(status, 200, "{g}");
    assert_eq!(g["created"], true);
    assert_eq!(g["name"], "ab");
    assert_eq!(g["groupName"], "ab");
    assert_eq!(g["members"], json!([alice, bob]));
    assert_eq!(
        g["member_users"],
        json!([{ "user_id": alice, "username": name }, { "user_id": bob, "username": bob_name }])
    );
    let group = g["group_id"].as_i64().expect("gid");
    let (_, again) = api
        .post_json("/create_group", &json!({ "groupName": "other", "created_by": bob, "user_ids": [alice] }))
        .await
        .expect("again");
    assert_eq!((again["group_id"].as_i64(), again["created"].as_bool()), (Some(group), Some(false)));
    assert_eq!(again["member_users"], g["member_users"]);
    assert_error(
        api.post_form("/create_group", &[("created_by", &alice.to_string()), ("user_ids", "999999999")])
            .await
            .expect("x"),
        404,
        "user_not_found",
    );
    assert_error(
        api.post_form("/create_group", &[("created_by", &alice.to_string())]).await.expect("x"),
        400,
        "invalid_members",
    );
    assert_error(
        api.post_form("/create_group", &[("created_by", "abc"), ("user_ids", "1")]).await.expect("x"),
        400,
        "invalid_id",
    );
    assert_error(api.post_form("/create_group", &[("user_ids", "1")]).await.expect("x"), 400, "missing_field");
    group
}

/// The pair-dedupe race: 20 concurrent calls, one id.
async fn pair_race(api: &Api) {
    let (c, d) =
        (api.register(&common::unique("c")).await.expect("c"), api.register(&common::unique("d")).await.expect("d"));
    let calls: Vec<_> = (0..20)
        .map(|i| {
            let api = api.clone();
            let (by, other) = if i % 2 == 0 { (c, d) } else { (d, c) };
            tokio::spawn(async move { api.create_group(by, &[other]).await.expect("race") })
        })
        .collect();
    let mut ids = Vec::new();
    for call in calls {
        ids.push(call.await.expect("join"));
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
}

/// Sending, by group and by receiver. Returns a user outside `group`.
async fn sending(api: &Api, alice: i64, bob: i64, group: i64) -> i64 {
    let (status, sent) = api.send(alice, group, "hello bob", None).await.expect("send");
    assert_eq!(status, 200, "{sent}");
    assert!(sent["message_id"].as_i64().is_some());
    assert_eq!(sent["group_id"].as_i64(), Some(group));
    assert!(sent["timestamp"].as_str().is_some_and(|t| t.ends_with('Z') && t.len() == 24), "{sent}");
    // By receiver_id: the 1:1 group, created if missing.
    let (status, by_receiver) = api
        .post_form(
            "/send_message",
            &[("sender_id", &bob.to_string()), ("receiver_id", &alice.to_string()), ("content", "hi")],
        )
        .await
        .expect("receiver");
    assert_eq!((status.as_u16(), by_receiver["group_id"].as_i64()), (200, Some(group)));
    let fresh = api.register(&common::unique("f")).await.expect("f");
    let (status, new_pair) = api
        .post_json("/send_message", &json!({ "sender_id": fresh, "receiver_id": alice, "content": "new chat" }))
        .await
        .expect("new pair");
    assert_eq!(status, 200, "{new_pair}");
    assert_ne!(new_pair["group_id"].as_i64(), Some(group));
    fresh
}

async fn idempotent_retry(api: &Api, alice: i64, group: i64) {
    let (_, first) = api.send(alice, group, "once", Some("retry-1")).await.expect("first");
    let (status, retry) = api.send(alice, group, "once", Some("retry-1")).await.expect("retry");
    assert_eq!(status, 200);
    assert_eq!(retry["message_id"], first["message_id"]);
    assert_eq!(retry["duplicate"], true);
    assert_error(api.send(alice, group, "changed", Some("retry-1")).await.expect("reuse"), 409, "client_msg_id_reused");
}

async fn bad_sends(api: &Api, alice: i64, bob: i64, fresh: i64, group: i64) {
    let s = alice.to_string();
    let g = group.to_string();
    assert_error(api.send(fresh, group, "not mine", None).await.expect("x"), 403, "not_a_member");
    assert_error(api.send(999_999_999, group, "ghost", None).await.expect("x"), 404, "user_not_found");
    assert_error(api.send(alice, 999_999_999, "nowhere", None).await.expect("x"), 404, "group_not_found");
    assert_error(api.send(alice, group, "", None).await.expect("x"), 400, "empty_content");
    assert_error(api.send(alice, group, "   ", None).await.expect("x"), 400, "empty_content");
    assert_error(api.send(alice, group, &"x".repeat(16 * 1024 + 1), None).await.expect("x"), 413, "message_too_large");
    assert_eq!(api.send(alice, group, &"x".repeat(16 * 1024), None).await.expect("x").0, 200, "exactly the limit");
    assert_error(
        api.post_form("/send_message", &[("sender_id", &s), ("content", "c")]).await.expect("x"),
        400,
        "invalid_target",
    );
    assert_error(
        api.post_form(
            "/send_message",
            &[("sender_id", &s), ("content", "c"), ("group_id", &g), ("receiver_id", &bob.to_string())],
        )
        .await
        .expect("x"),
        400,
        "invalid_target",
    );
    assert_error(
        api.post_form("/send_message", &[("sender_id", &s), ("content", "c"), ("group_id", "-4")]).await.expect("x"),
        400,
        "invalid_id",
    );
    assert_error(
        api.post_form("/send_message", &[("sender_id", &s), ("sender_id", "2"), ("content", "c"), ("group_id", &g)])
            .await
            .expect("x"),
        400,
        "duplicate_field",
    );
}

async fn history(api: &Api, alice: i64, bob: i64, group: i64) {
    let (status, history) = api.get(&format!("/groups/{group}/messages?limit=500")).await.expect("history");
    assert_eq!(status, 200);
    let history = history.as_array().expect("array").clone();
    let ids: Vec<i64> = history.iter().filter_map(|m| m["message_id"].as_i64()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "history in id order");
    assert_eq!(history[0]["content"], "hello bob");
    assert_eq!(history[0]["sender_id"].as_i64(), Some(alice));
    let (_, page) = api.get(&format!("/groups/{group}/messages?after={}&limit=1", ids[0])).await.expect("page");
    assert_eq!(page[0]["message_id"].as_i64(), Some(ids[1]));
    assert_error(api.get(&format!("/groups/{group}/messages?limit=501")).await.expect("x"), 400, "invalid_limit");
    assert_error(api.get("/groups/999999999/messages").await.expect("x"), 404, "group_not_found");
    assert_error(api.get("/groups/abc/messages").await.expect("x"), 400, "invalid_id");
    let (status, groups) = api.get(&format!("/users/{alice}/groups")).await.expect("groups");
    assert_eq!(status, 200);
    let groups = groups.as_array().expect("array");
    assert_eq!(groups.len(), 2);
    assert!(groups.iter().any(|g| g["group_id"].as_i64() == Some(group) && g["members"] == json!([alice, bob])));
    assert_error(api.get("/users/999999999/groups").await.expect("x"), 404, "user_not_found");
    assert_error(api.get("/users/0/groups").await.expect("x"), 400, "invalid_id");
}

/// Unknown routes and methods, probes.
async fn routes(api: &Api) {
    assert_error(api.get("/nope").await.expect("x"), 404, "route_not_found");
    assert_error(api.get("/register").await.expect("x"), 405, "method_not_allowed");
    let (status, _) = api.get("/healthz").await.expect("healthz");
    assert_eq!(status, 200);
    let (status, ready) = api.get("/readyz").await.expect("readyz");
    assert_eq!(status, 200, "{ready}");
    // The WebSocket route refuses non-upgrades and bad ids.
    assert_error(api.get("/ws/abc").await.expect("x"), 400, "invalid_id");
}

/// `GET /users/{id}`, `GET /users?username=`, and members named in every group payload.
async fn people(api: &Api, (alice, name): (i64, &str), (bob, bob_name): (i64, &str), sqli: &str) {
    let by_name = |username: &str| {
        let query = form_urlencoded::Serializer::new(String::new()).append_pair("username", username).finish();
        let api = api.clone();
        async move { api.get(&format!("/users?{query}")).await.expect("by name") }
    };
    let (status, user) = api.get(&format!("/users/{alice}")).await.expect("by id");
    assert_eq!((status.as_u16(), user), (200, json!({ "user_id": alice, "username": name })));
    assert_error(api.get("/users/999999999").await.expect("x"), 404, "user_not_found");
    assert_error(api.get("/users/0").await.expect("x"), 400, "invalid_id");
    assert_error(api.get("/users/abc").await.expect("x"), 400, "invalid_id");

    let (status, user) = by_name(bob_name).await;
    assert_eq!((status.as_u16(), user), (200, json!({ "user_id": bob, "username": bob_name })));
    let (status, user) = by_name(sqli).await;
    assert_eq!((status.as_u16(), user["username"].as_str()), (200, Some(sqli)), "{user}");
    // Blanks around the query are trimmed, as registration trims them.
    assert_eq!(by_name(&format!("  {name} ")).await.1["user_id"].as_i64(), Some(alice));
    // Exact: no case folding, no prefix match.
    assert_error(by_name(&name.to_uppercase()).await, 404, "user_not_found");
    assert_error(by_name(&name[..name.len() - 1]).await, 404, "user_not_found");
    assert_error(by_name(&common::unique("nobody")).await, 404, "user_not_found");
    assert_error(api.get("/users").await.expect("x"), 400, "invalid_username");
    assert_error(by_name("").await, 400, "invalid_username");
    assert_error(by_name("   ").await, 400, "invalid_username");
    assert_error(by_name("a\u{7}b").await, 400, "invalid_username");
    assert_error(by_name(&"x".repeat(65)).await, 400, "invalid_username");
    assert_error(api.get("/users?username=a&username=b").await.expect("x"), 400, "duplicate_field");
    assert_error(api.post_form("/users", &[("username", "x")]).await.expect("x"), 405, "method_not_allowed");
    assert_error(api.post_form(&format!("/users/{alice}"), &[]).await.expect("x"), 405, "method_not_allowed");

    // A larger group names every member, and the listing names them too, in `members` order.
    let carol = api.register(&common::unique("carol")).await.expect("carol");
    let (status, trio) = api
        .post_json("/create_group", &json!({ "name": "trio", "created_by": carol, "user_ids": [bob, alice] }))
        .await
        .expect("trio");
    assert_eq!(status, 200, "{trio}");
    let ids: Vec<i64> = trio["member_users"]
        .as_array()
        .expect("member_users")
        .iter()
        .map(|u| u["user_id"].as_i64().expect("id"))
        .collect();
    assert_eq!(json!(ids), trio["members"]);
    assert_eq!(trio["member_users"][0], json!({ "user_id": alice, "username": name }));
    let (_, groups) = api.get(&format!("/users/{bob}/groups")).await.expect("groups");
    let listed =
        groups.as_array().expect("array").iter().find(|g| g["group_id"] == trio["group_id"]).expect("trio listed");
    assert_eq!(listed["member_users"], trio["member_users"]);
    for g in groups.as_array().expect("array") {
        let named = g["member_users"].as_array().expect("member_users");
        assert_eq!(named.len(), g["members"].as_array().expect("members").len(), "{g}");
        assert!(named.iter().all(|u| u["username"].as_str().is_some_and(|n| !n.is_empty())), "{g}");
    }
}

/// The web client's page (the embedded node serves the same page as any other).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_served() {
    let node = common::embedded(&[]).await;
    let page = hyper::Request::get("/").body(http_body_util::Full::new(bytes::Bytes::new())).expect("req");
    let (status, _) = node.api().request(page).await.expect("page");
    assert_eq!(status, 200);
    node.stop().await;
}

/// `GET /users/{id}/presence` (docs/api.md): 404 without a presence store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_unavailable_without_a_presence_store() {
    let embedded = common::embedded(&[]).await;
    let user = common::users(&embedded.api(), 1).await[0];
    assert_error(
        embedded.api().get(&format!("/users/{user}/presence")).await.expect("get"),
        404,
        "presence_unavailable",
    );
    embedded.stop().await;
}

/// `GET /users/{id}/presence` in `node` routing: online on as many nodes as hold the user's
/// sessions, and offline once they left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs MariaDB and Redis; scripts/test runs it"]
async fn presence_in_node_routing() {
    let (db, redis) = (common::mysql_url(), common::redis_url());
    let args = ["--database-url", &db, "--redis-url", &redis, "--routing", "node", "--presence-cache", "0"];
    let node = common::start(&args).await;
    let api = node.api();
    let user = common::users(&api, 1).await[0];
    let presence = |id: i64| {
        let api = api.clone();
        async move { api.get(&format!("/users/{id}/presence")).await.expect("presence") }
    };
    assert_eq!(presence(user).await.1, json!({ "user_id": user, "online": false, "nodes": 0 }));
    let mut ws = switchboard::client::connect_ws(node.addr, user, false).await.expect("connect");
    let _hello = ws.next(std::time::Duration::from_secs(5)).await;
    let mut second = switchboard::client::connect_ws(node.addr, user, false).await.expect("connect");
    let _hello = second.next(std::time::Duration::from_secs(5)).await;
    assert_eq!(
        presence(user).await.1,
        json!({ "user_id": user, "online": true, "nodes": 1 }),
        "two sessions, one node"
    );
    ws.close().await;
    second.close().await;
    let mut offline = false;
    for _ in 0..50 {
        if presence(user).await.1["online"] == false {
            offline = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(offline, "still online after both sessions closed");
    assert_error(presence(i64::MAX / 2).await, 404, "user_not_found");
    assert_error(presence(0).await, 400, "invalid_id");
    node.stop().await;
}

/// A drained `node`-routing node deletes its liveness key once its sessions are gone, so the
/// fleet stops routing to it at once instead of after `--presence-ttl`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs MariaDB and Redis; scripts/test runs it"]
async fn a_drained_node_retires_its_presence() {
    let (db, redis) = (common::mysql_url(), common::redis_url());
    let args = ["--database-url", &db, "--redis-url", &redis, "--routing", "node", "--presence-ttl", "60s"];
    let (a, b) = (common::start(&args).await, common::start(&args).await);
    let alive = || {
        let (redis, pattern) = (redis.clone(), format!("{}:alive:*", db.rsplit('/').next().unwrap_or("")));
        async move {
            let client = redis::Client::open(redis.as_str()).expect("redis");
            let mut conn = client.get_multiplexed_async_connection().await.expect("conn");
            let keys: Vec<String> = redis::cmd("KEYS").arg(pattern).query_async(&mut conn).await.expect("keys");
            keys.len()
        }
    };
    // Each node sets its key as it starts, without making the start wait for it.
    for _ in 0..50 {
        if alive().await == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(alive().await, 2);
    a.stop().await;
    assert_eq!(alive().await, 1, "the drained node is still alive for the fleet");
    b.stop().await;
    assert_eq!(alive().await, 0);
}
