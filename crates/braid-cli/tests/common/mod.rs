//! What the CLI's integration tests share: a command's JSON output, where
//! a `braid serve` child listens, and one plain HTTP/1.1 request to it,
//! spoken over a socket as any client would. Each test binary uses a part
//! of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Output};
use std::time::Duration;

/// A command's stdout as JSON, or a panic that shows what it printed
/// instead (stdout and stderr).
pub(crate) fn json_of(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// Reads `braid serve`'s stderr (which must be piped) until it says where
/// it listens, and returns that `host:port`; the rest of its stderr is
/// drained on a thread, so the server never blocks writing to it.
pub(crate) fn listening_address(child: &mut Child) -> String {
    let stderr = child.stderr.take().expect("braid serve's stderr is piped");
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("braid serve says where it listens")
            .unwrap();
        if let Some((_, rest)) = line.split_once("serving on http://") {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    addr
}

/// One request to `addr` (`Connection: close`, read to the end within
/// `timeout`); its status and body. A `content_type` of `None` sends no
/// body headers (a plain GET).
pub(crate) fn request(
    addr: &str,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &str,
    timeout: Duration,
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("braid serve accepts connections");
    stream.set_read_timeout(Some(timeout)).unwrap();
    let headers = match content_type {
        Some(kind) => format!("Content-Type: {kind}\r\nContent-Length: {}\r\n", body.len()),
        None => String::new(),
    };
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n{body}"
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP response (did braid serve die?): {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}
