//! `ecs-reloader healthcheck`: the container health check of an image with no shell and no
//! curl. It asks `serve`'s `/healthz` on the loopback address it listens on.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `Ok` when `serve` at `addr` answers `/healthz` with 200 within three seconds; otherwise why
/// not.
pub async fn probe(addr: &str) -> Result<(), String> {
    let ask = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await?;
        let mut answer = String::new();
        s.read_to_string(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    match tokio::time::timeout(Duration::from_secs(3), ask).await {
        Ok(Ok(answer)) if answer.starts_with("HTTP/1.1 200") => Ok(()),
        Ok(Ok(answer)) => Err(format!(
            "answered {:?}",
            answer.lines().next().unwrap_or_default()
        )),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer within 3 s".into()),
    }
}
