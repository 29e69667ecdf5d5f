//! The `switchboard` binary: load config (exit 64 when it is bad; `--check-config` stops
//! after printing it), bind, run the node, and
//! turn signals into the drain: the first SIGTERM/SIGINT drains, a second cuts at once.

use std::process::ExitCode;

use switchboard::app::StartError;
use switchboard::config::LogFormat;
use switchboard::{App, Config};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

/// sysexits: bad configuration or usage.
const EX_CONFIG: u8 = 64;
/// sysexits: a backend needed at start is unavailable.
const EX_UNAVAILABLE: u8 = 69;

fn main() -> ExitCode {
    let config = match Config::parse_from_env(std::env::args_os(), |name| std::env::var(name).ok()) {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let first = e.to_string().lines().next().unwrap_or("invalid arguments").to_owned();
            eprintln!("switchboard: {first}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    if let Err(msg) = config.validate() {
        eprintln!("switchboard: {msg}");
        return ExitCode::from(EX_CONFIG);
    }
    if config.check_config {
        print!("{}", config.report());
        return ExitCode::SUCCESS;
    }
    init_tracing(config.log_format);
    // Each WebSocket is a file descriptor: take the hard limit, since containers often start
    // with a soft limit of 1024.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "file descriptor limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the file descriptor limit"),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchboard: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(config))
}

async fn run(config: Config) -> ExitCode {
    let bind = |addr| async move { listen(addr).map_err(|e| format!("cannot listen on {addr}: {e}")) };
    let listeners = async {
        let public = bind(config.listen).await?;
        let admin = bind(config.admin_listen).await?;
        let agent = match config.agent_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        Ok::<_, String>((public, admin, agent))
    };
    let (public, admin, agent) = match listeners.await {
        Ok(l) => l,
        Err(msg) => {
            eprintln!("switchboard: {msg}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    let app = match App::build(config.clone()).await {
        Ok(app) => app,
        Err(e @ StartError::Routing(_)) => {
            eprintln!("switchboard: {e}");
            return ExitCode::from(EX_CONFIG);
        }
        Err(e) => {
            eprintln!("switchboard: {e}");
            return ExitCode::from(EX_UNAVAILABLE);
        }
    };
    tracing::info!(listen = %config.listen, admin = %config.admin_listen, node = %app.state().node, "switchboard starting");
    if let Some(warning) = config.exposure_warning() {
        tracing::warn!("{warning}; set --token-secret, or keep the node behind a proxy that authenticates");
    }
    let lifecycle = app.lifecycle();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received: draining");
        lifecycle.drain();
        wait_for_signal().await;
        tracing::warn!("second signal: finishing now");
        lifecycle.cut_now();
    });
    app.run(public, admin, agent).await;
    ExitCode::SUCCESS
}

/// Binds with a deep accept backlog: the default 128 overflows in a reconnect storm, and each
/// overflow costs the client a one-second SYN retransmission.
fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
