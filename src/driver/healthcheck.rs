//! `ecs-reloader healthcheck`: the container health check of an image with no shell and no
//! curl. It asks `serve`'s `/healthz` on the loopback address it listens on.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Where `serve` listening on `listen` (`[serve] listen`) is asked from the same host: on
/// loopback when it listens on every address, on its own address otherwise. What the
/// configuration did not validate is asked as written (the probe then says why it failed).
pub fn local(listen: &str) -> String {
    match listen.parse::<SocketAddr>() {
        Ok(a) if a.ip().is_unspecified() => {
            let ip = match a.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            };
            SocketAddr::new(ip, a.port()).to_string()
        }
        _ => listen.to_string(),
    }
}

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

#[cfg(test)]
mod tests {
    use super::local;

    #[test]
    fn serve_listening_everywhere_is_asked_on_loopback_at_its_port() {
        assert_eq!(local("0.0.0.0:8080"), "127.0.0.1:8080");
        assert_eq!(local("0.0.0.0:9100"), "127.0.0.1:9100");
        assert_eq!(local("[::]:9100"), "[::1]:9100");
        assert_eq!(local("10.0.0.5:8080"), "10.0.0.5:8080");
    }
}
