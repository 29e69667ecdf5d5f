//! HAProxy agent-check listener: each connection gets one line, `ready`, `drain` or `maint`,
//! and is closed. HAProxy sets the server's state from it, so a draining node stops getting
//! new connections even before its HTTP health check fails.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::lifecycle::{Lifecycle, Phase};

pub fn answer(phase: Phase) -> &'static str {
    match phase {
        Phase::Ready => "ready\n",
        Phase::Draining => "drain\n",
        Phase::Starting | Phase::Stopped => "maint\n",
    }
}

pub async fn serve(listener: TcpListener, lifecycle: Lifecycle, stop: CancellationToken) {
    loop {
        let mut stream = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let line = answer(lifecycle.phase());
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(line.as_bytes())).await;
            let _ = stream.shutdown().await;
        });
    }
}
