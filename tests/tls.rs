//! TLS to every backend, against servers that speak only TLS, with certificates made by
//! openssl for this run: a CA the node is told to trust (`--tls-ca-file`), a server
//! certificate it signed for 127.0.0.1, and a second CA the node must not trust.
//!
//! Each test starts its own server on its own port and data directory and stops it at the
//! end (the shared services on the usual ports are not touched).

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::TempDir;
use switchboard::inbox::MongoInbox;
use switchboard::metrics::Metrics;
use switchboard::tls::Trust;

struct Certs {
    dir: TempDir,
}

impl Certs {
    /// `ca.pem` signs `server.pem` (127.0.0.1 and localhost); `rogue-ca.pem` signs nothing
    /// the servers use.
    fn make() -> Certs {
        let dir = TempDir::new();
        let sh = format!(
            r#"set -e; cd '{d}'
            openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=switchboard-test-ca -keyout ca.key -out ca.pem
            openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=rogue-ca -keyout rogue.key -out rogue-ca.pem
            openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout server.key -out server.csr
            printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > ext.cnf
            openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile ext.cnf -out server.pem
            cat server.key server.pem > server-bundle.pem
            chmod 644 *.key"#,
            d = dir.path
        );
        let out = Command::new("sh").args(["-c", &sh]).output().expect("openssl");
        assert!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
        Certs { dir }
    }

    fn path(&self, file: &str) -> String {
        format!("{}/{file}", self.dir.path)
    }

    fn trust(&self, ca: &str) -> Trust {
        Trust::load(Some(Path::new(&self.path(ca)))).expect("CA loads")
    }
}

/// A server process killed when the test ends, pass or fail.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_port(port: u16, what: &str) {
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} did not open port {port}");
}

/// Fails the test unless every program of `names` is installed.
fn tools(names: &[&str]) {
    names.iter().for_each(|n| common::require_program(n));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs openssl and redis-server; scripts/test runs it"]
async fn rediss_to_a_tls_only_redis_and_an_untrusted_certificate_is_refused() {
    tools(&["openssl", "redis-server"]);
    let certs = Certs::make();
    let port = common::free_port();
    let server = Server(
        Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--tls-cert-file", &certs.path("server.pem"), "--tls-key-file", &certs.path("server.key")])
            .args(["--tls-ca-cert-file", &certs.path("ca.pem"), "--tls-auth-clients", "no"])
            .args(["--save", "", "--appendonly", "no", "--dir", &certs.dir.path])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server"),
    );
    wait_port(port, "TLS redis").await;
    let url = format!("rediss://127.0.0.1:{port}");
    let ping = |trust: Trust| {
        let url = url.clone();
        async move {
            let client = trust.redis_client(&url)?;
            let mut conn = client.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<String>(&mut conn).await
        }
    };
    assert_eq!(ping(certs.trust("ca.pem")).await.expect("trusted CA"), "PONG");
    assert!(ping(certs.trust("rogue-ca.pem")).await.is_err(), "a certificate of an untrusted CA was accepted");
    assert!(ping(Trust::default()).await.is_err(), "the system roots trusted a private CA");
    let plain = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("url");
    let plain = tokio::time::timeout(Duration::from_secs(3), async {
        let mut c = plain.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut c).await
    });
    assert!(!matches!(plain.await, Ok(Ok(_))), "the server answered plaintext; it is not TLS-only");

    // A node on it: the backplane is up and a message travels through it.
    let (db, _dir) = common::sqlite_url();
    let node =
        common::start(&["--database-url", &db, "--redis-url", &url, "--tls-ca-file", &certs.path("ca.pem")]).await;
    let api = node.api();
    let (status, ready) = switchboard::client::Api::new(node.admin).get("/readyz").await.expect("readyz");
    assert_eq!((status.as_u16(), &ready["backends"]["backplane"]), (200, &serde_json::json!("up")), "{ready}");
    let u = common::users(&api, 2).await;
    let g = api.create_group(u[0], &[u[1]]).await.expect("group");
    let mut ws = switchboard::client::connect_ws(node.addr, u[1], false).await.expect("ws");
    assert!(
        matches!(ws.next(Duration::from_secs(5)).await, Some(switchboard::client::WsEvent::Json(v)) if v["type"] == "hello")
    );
    api.send(u[0], g, "over TLS", None).await.expect("send");
    let frame = ws.next(Duration::from_secs(5)).await;
    assert!(matches!(&frame, Some(switchboard::client::WsEvent::Json(v)) if v["content"] == "over TLS"), "{frame:?}");
    node.stop().await;
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs openssl and MariaDB binaries; scripts/test runs it"]
async fn mariadb_over_tls_with_every_ssl_mode() {
    tools(&["openssl", "mariadbd", "mariadb-install-db", "mysql"]);
    let certs = Certs::make();
    let data = TempDir::new();
    let port = common::free_port();
    let socket = format!("{}/mysqld.sock", data.path);
    let install = Command::new("mariadb-install-db")
        .args(["--no-defaults", "--user=root", "--skip-test-db", "--auth-root-authentication-method=socket"])
        .arg(format!("--datadir={}/db", data.path))
        .output()
        .expect("mariadb-install-db");
    assert!(install.status.success(), "install-db: {}", String::from_utf8_lossy(&install.stderr));
    let server = Server(
        Command::new("mariadbd")
            .args(["--no-defaults", "--user=root", "--bind-address=127.0.0.1", "--skip-log-bin"])
            .arg(format!("--datadir={}/db", data.path))
            .arg(format!("--port={port}"))
            .arg(format!("--socket={socket}"))
            .arg(format!("--pid-file={}/mysqld.pid", data.path))
            .arg(format!("--log-error={}/error.log", data.path))
            .arg(format!("--ssl-ca={}", certs.path("ca.pem")))
            .arg(format!("--ssl-cert={}", certs.path("server.pem")))
            .arg(format!("--ssl-key={}", certs.path("server.key")))
            .args(["--require-secure-transport=ON", "--innodb-buffer-pool-size=16M", "--performance-schema=OFF"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mariadbd"),
    );
    wait_port(port, "TLS MariaDB").await;
    // sqlx speaks mysql_native_password; a fresh root only has unix_socket.
    let grant = Command::new("mysql")
        .args(["--no-defaults", "-uroot", &format!("--socket={socket}"), "-e"])
        .arg(
            "ALTER USER 'root'@'localhost' IDENTIFIED VIA mysql_native_password USING PASSWORD('') OR unix_socket; \
             CREATE USER 'root'@'127.0.0.1' IDENTIFIED VIA mysql_native_password USING PASSWORD(''); \
             GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION; FLUSH PRIVILEGES;",
        )
        .output()
        .expect("mysql");
    assert!(grant.status.success(), "grant: {}", String::from_utf8_lossy(&grant.stderr));

    let url = |mode: &str| format!("mysql://root@127.0.0.1:{port}/{}?ssl-mode={mode}", common::unique("tls"));
    let connect = |url: String, trust: Trust| async move {
        switchboard::store::Database::connect(&trust.mysql_url(&url)).await.map(|_| ())
    };
    // The server refuses plaintext, so what works below is TLS.
    assert!(connect(url("DISABLED"), Trust::default()).await.is_err(), "plaintext accepted");
    connect(url("REQUIRED"), Trust::default()).await.expect("REQUIRED encrypts without verifying");
    connect(url("VERIFY_CA"), certs.trust("ca.pem")).await.expect("VERIFY_CA with the CA");
    connect(url("VERIFY_IDENTITY"), certs.trust("ca.pem")).await.expect("VERIFY_IDENTITY with the CA");
    for (mode, trust) in [("VERIFY_CA", certs.trust("rogue-ca.pem")), ("VERIFY_IDENTITY", Trust::default())] {
        assert!(connect(url(mode), trust).await.is_err(), "{mode}: an untrusted certificate was accepted");
    }
    // A node on it, end to end.
    let db = url("VERIFY_IDENTITY");
    let node = common::start(&["--database-url", &db, "--tls-ca-file", &certs.path("ca.pem")]).await;
    let api = node.api();
    let u = common::users(&api, 2).await;
    let g = api.create_group(u[0], &[u[1]]).await.expect("group");
    api.send(u[0], g, "stored over TLS", None).await.expect("send");
    let (_, history) = api.get(&format!("/groups/{g}/messages")).await.expect("history");
    assert_eq!(history[0]["content"], "stored over TLS");
    node.stop().await;
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs openssl and the MongoDB stand-in binary; scripts/test runs it"]
async fn mongodb_over_tls_to_the_stand_in() {
    tools(&["openssl", "secantusd-py"]);
    let certs = Certs::make();
    let port = common::free_port();
    let server = Server(
        Command::new("secantusd-py")
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--storage-path", ":memory:", "--standalone"])
            .args(["--tls-cert-file", &certs.path("server.pem"), "--tls-key-file", &certs.path("server.key")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("secantusd-py"),
    );
    wait_port(port, "TLS MongoDB stand-in").await;
    let url = format!("mongodb://127.0.0.1:{port}/{}?tls=true", common::unique("tls"));
    let connect = |trust: Trust| {
        let url = url.clone();
        async move { MongoInbox::connect(&url, &trust, Arc::new(Metrics::new("t"))).await.map(|_| ()) }
    };
    connect(certs.trust("ca.pem")).await.expect("TLS with the trusted CA");
    assert!(connect(certs.trust("rogue-ca.pem")).await.is_err(), "an untrusted certificate was accepted");
    assert!(connect(Trust::default()).await.is_err(), "the default roots trusted a private CA");
    // The CA bundle written for the driver is gone once the client is built.
    let left = std::fs::read_dir(std::env::temp_dir())
        .expect("tmp")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(&format!("switchboard-ca-{}-", std::process::id())))
        .count();
    assert_eq!(left, 0, "CA bundle files left in the temp dir");
    drop(server);
}

#[tokio::test]
async fn mongodb_srv_urls_are_resolved_not_refused() {
    // No DNS server here has SRV records, so resolution fails; what matters is that it is
    // attempted (the resolver is built in) rather than refused as an unsupported scheme.
    let err = mongodb::options::ClientOptions::parse("mongodb+srv://cluster0.switchboard-test.invalid/db")
        .await
        .expect_err("no such SRV record");
    let text = err.to_string();
    assert!(!text.contains("dns-resolver") && !text.contains("not supported"), "{text}");
    assert!(matches!(*err.kind, mongodb::error::ErrorKind::DnsResolve { .. }), "{err:?}");
}
