//! tcpeek's statistics socket: a client connects, sends one line (`GET` or
//! `REFRESH`, ending in CRLF or LF), gets one JSON document and the server
//! closes. Any other line gets the `GET` answer, as in tcpeek; a client
//! that sends nothing within a second is closed on without an answer.

use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};

use crate::run::Query;

/// Longest request line read; tcpeek reads 128 bytes.
const MAX_LINE: u64 = 128;

/// Binds the socket: makes its directory if missing, replaces a stale
/// socket file left by a crashed run (but not one a running server still
/// answers on, nor anything that is not a socket), and gives it mode 0660.
pub(super) fn bind(path: &Path) -> Result<std::os::unix::net::UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the socket's directory {}", dir.display()))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!(
                    "{}: another tcpmon peek (or tcpeek) answers on this socket; stop it or choose \
                     another path with -U",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
        }
        Ok(_) => bail!(
            "{} exists and is not a socket; remove it or choose another path with -U",
            path.display()
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", path.display())),
    }
    let listener = std::os::unix::net::UnixListener::bind(path)
        .with_context(|| format!("cannot create the socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Accepts clients for as long as the run lasts, each answered on a task
/// of its own; their requests go to the run loop.
pub(super) async fn accept(listener: tokio::net::UnixListener, requests: mpsc::Sender<Query>) {
    loop {
        if let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream, requests.clone()));
        }
    }
}

/// Answers one client: reads its line, asks the run loop for the
/// document, writes it and closes.
pub(super) async fn serve(stream: tokio::net::UnixStream, requests: mpsc::Sender<Query>) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_LINE));
    match tokio::time::timeout(Duration::from_secs(1), reader.read_line(&mut line)).await {
        Ok(Ok(n)) if n > 0 => {}
        _ => return,
    }
    let refresh = line.trim() == "REFRESH";
    let (tx, rx) = oneshot::channel();
    if requests.send(Query { refresh, reply: tx }).await.is_err() {
        return;
    }
    if let Ok(doc) = rx.await {
        let _ = write.write_all(doc.as_bytes()).await;
        let _ = write.shutdown().await;
    }
}

/// The client side (`peekstat`): sends `GET` or `REFRESH` and returns the
/// document.
pub fn query(path: &Path, refresh: bool) -> Result<String> {
    let mut s = std::os::unix::net::UnixStream::connect(path).with_context(|| {
        format!(
            "cannot connect to {} (is tcpmon peek running? -U names another socket)",
            path.display()
        )
    })?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    let method: &[u8] = if refresh { b"REFRESH\r\n" } else { b"GET\r\n" };
    s.write_all(method)
        .with_context(|| format!("cannot send to {}", path.display()))?;
    let mut doc = String::new();
    s.read_to_string(&mut doc)
        .with_context(|| format!("cannot read from {}", path.display()))?;
    Ok(doc)
}

/// Item order in tcpeekstat's table (the document's order); keys not
/// listed follow in name order.
const ORDER: [&str; 14] = [
    "total",
    "timeout",
    "reject",
    "unreach",
    "dupsyn",
    "dupsynack",
    "recv",
    "drop",
    "ifdrop",
    "events_lost",
    "sessions_dropped",
    "unparsed",
    "not_tcp",
    "pending",
];

fn ordered(obj: &serde_json::Map<String, serde_json::Value>) -> Vec<(&String, &serde_json::Value)> {
    let mut items: Vec<_> = obj.iter().collect();
    let rank = |k: &str| {
        let section = ["success", "failure", "stats"].iter().position(|s| *s == k);
        section
            .or_else(|| ORDER.iter().position(|o| *o == k))
            .unwrap_or(usize::MAX)
    };
    items.sort_by(|a, b| rank(a.0).cmp(&rank(b.0)).then(a.0.cmp(b.0)));
    items
}

/// tcpeekstat's text table for a document.
pub fn table(doc: &str) -> Result<String> {
    let value: serde_json::Value = serde_json::from_str(doc)
        .with_context(|| format!("the socket answered no JSON: {doc:?}"))?;
    let Some(filters) = value.as_array() else {
        bail!("the socket answered a JSON document of another shape: {doc}");
    };
    let mut out = String::from("====== TCPEEK SUMMARY ======\n");
    for f in filters.iter().filter_map(|f| f.as_object()) {
        for (name, sections) in f {
            out.push_str("----------------------------\n");
            out.push_str(&format!(" {name}\n"));
            out.push_str("----------------------------\n");
            let Some(sections) = sections.as_object() else {
                continue;
            };
            for (section, items) in ordered(sections) {
                out.push_str(&format!(" {section}\n"));
                for (item, v) in items.as_object().map(ordered).unwrap_or_default() {
                    out.push_str(&format!("     {item:<10} {:>10}\n", v.to_string()));
                }
            }
        }
    }
    out.push_str("============================\n");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_tcpeekstats() {
        let doc = r#"[{"RX":{"success":{"total":1,"dupsyn":0,"dupsynack":0},"failure":{"total":2,"timeout":1,"reject":1,"unreach":0,"dupsyn":1,"dupsynack":0}}},{"pcap":{"stats":{"recv":44,"drop":0,"ifdrop":0}}}]"#;
        let t = table(doc).unwrap();
        assert!(t.starts_with(
            "====== TCPEEK SUMMARY ======\n----------------------------\n RX\n----------------------------\n success\n     total               1\n     dupsyn              0\n     dupsynack           0\n failure\n     total               2\n     timeout             1\n"
        ), "{t}");
        assert!(
            t.contains(" pcap\n----------------------------\n stats\n     recv               44\n"),
            "{t}"
        );
        assert!(t.ends_with("============================\n"));
        assert!(table("nope").is_err());
    }

    #[test]
    fn stale_sockets_are_replaced_live_ones_and_other_files_kept() {
        let dir = std::env::temp_dir().join(format!("tcpmon-sock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("sub/tcpeek.sock");
        let live = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o660);
        let err = bind(&path).unwrap_err().to_string();
        assert!(err.contains("another tcpmon peek"), "{err}");
        drop(live); // the file stays behind, as after a crash
        assert!(path.exists());
        let _again = bind(&path).unwrap();
        let file = dir.join("plain");
        std::fs::write(&file, "x").unwrap();
        assert!(
            bind(&file)
                .unwrap_err()
                .to_string()
                .contains("not a socket")
        );
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
