//! tcpeek's statistics socket: a client connects, sends one line (`GET` or
//! `REFRESH`, ending in CRLF or LF), gets one JSON document and the server
//! closes. Any other line gets the `GET` answer, as in tcpeek.
//!
//! Limits (docs/peek.md): a client is anyone who may open the socket, so
//! none may stall the others or the counting, nor make the process grow.
//! The request line is read into a fixed buffer of [`MAX_LINE`] bytes and
//! never further; a client has [`IDLE`] to send it and [`WRITE`] to take
//! the answer; at most [`MAX_CLIENTS`] are served at once. Each refusal is
//! a JSON object `{"error":"..."}` written before closing, so the client
//! learns why rather than seeing a bare close.

use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::run::Query;

/// Longest request line, its end included; tcpeek reads 128 bytes.
pub(super) const MAX_LINE: usize = 128;
/// How long a client may take to send its line. Clients are local
/// programs that send at once; one that has sent nothing by then is
/// probably not a tcpeek client, and holds a slot until then.
const IDLE: Duration = Duration::from_secs(1);
/// How long a client may take to read its answer (a few hundred bytes
/// that fit the socket's buffer: only a client that stopped reading with a
/// large answer waits this long).
const WRITE: Duration = Duration::from_secs(1);
/// Clients served at once. Each costs a task with its line buffer (under a
/// kilobyte) and a file descriptor; monitoring asks a few times a minute,
/// so this many at once is already abuse, which is then refused rather
/// than queued.
pub(super) const MAX_CLIENTS: usize = 1024;
/// Descriptors kept for everything but clients (maps, ring buffer,
/// runtime, logs) when the limit on open files decides the cap.
const SPARE_FDS: u64 = 64;
/// After a failed accept (out of descriptors), how long to wait before the
/// next: the error would come back at once and spin the run's thread.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

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

/// How many clients can be served at once: [`MAX_CLIENTS`], once the soft
/// limit on open files is raised to fit them (systemd's default of 1,024
/// would not, beside the maps), or fewer when the hard limit is lower. A
/// client beyond is refused with a reason instead of failing accept.
pub(super) fn client_slots() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit with a valid rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return MAX_CLIENTS;
    }
    let open = std::fs::read_dir("/proc/self/fd").map_or(SPARE_FDS, |d| d.count() as u64);
    let want = open + SPARE_FDS + MAX_CLIENTS as u64;
    if lim.rlim_cur < want {
        let raised = libc::rlimit {
            rlim_cur: want.min(lim.rlim_max),
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim = raised;
        }
    }
    let fit = lim.rlim_cur.saturating_sub(open + SPARE_FDS) as usize;
    if fit < MAX_CLIENTS {
        log::warn!(
            "the limit on open files ({}) lets the socket serve {fit} clients at once, not \
             {MAX_CLIENTS}",
            lim.rlim_cur
        );
    }
    fit.clamp(1, MAX_CLIENTS)
}

/// Accepts clients for as long as the run lasts, each served on a task of
/// its own while one of `slots` is free; their requests go to the run
/// loop, which answers those waiting together.
pub(super) async fn accept(
    listener: tokio::net::UnixListener,
    requests: mpsc::Sender<Query>,
    slots: usize,
) {
    let cap = slots;
    let slots = Arc::new(Semaphore::new(cap));
    loop {
        match listener.accept().await {
            Ok((stream, _)) => match slots.clone().try_acquire_owned() {
                Ok(slot) => {
                    let requests = requests.clone();
                    tokio::spawn(async move {
                        serve(stream, requests).await;
                        drop(slot);
                    });
                }
                // Without a task: the refusal fits the empty send buffer.
                // A request already sent is read first: closing on unread
                // data would reset the connection, and the client could
                // lose the refusal.
                Err(_) => {
                    let mut request = [0u8; MAX_LINE];
                    let _ = stream.try_read(&mut request);
                    let _ = stream.try_write(&refusal(&format!(
                        "too many clients at once (at most {cap}); try again"
                    )));
                }
            },
            Err(_) => tokio::time::sleep(ACCEPT_BACKOFF).await,
        }
    }
}

/// `{"error":"why"}` and a newline.
fn refusal(why: &str) -> Vec<u8> {
    let mut doc = serde_json::json!({ "error": why }).to_string().into_bytes();
    doc.push(b'\n');
    doc
}

/// What a client's line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    Get,
    Refresh,
}

/// Why a client gets no statistics.
#[derive(Debug, PartialEq, Eq)]
enum Refused {
    /// Closed before sending anything: no one to answer.
    Gone,
    TooLong,
    Idle,
}

/// Reads one request line, at most [`MAX_LINE`] bytes, never more: what a
/// client sends beyond stays in the kernel's buffer until the close
/// discards it. A line cut short by the client's close still counts, as
/// tcpeek read whatever came.
async fn read_request(read: &mut (impl tokio::io::AsyncRead + Unpin)) -> Result<Request, Refused> {
    let mut buf = [0u8; MAX_LINE];
    let mut len = 0;
    loop {
        if let Some(end) = buf[..len].iter().position(|&b| b == b'\n') {
            len = end;
            break;
        }
        if len == MAX_LINE {
            return Err(Refused::TooLong);
        }
        match read.read(&mut buf[len..]).await {
            Ok(0) | Err(_) if len == 0 => return Err(Refused::Gone),
            Ok(0) | Err(_) => break,
            Ok(n) => len += n,
        }
    }
    match std::str::from_utf8(&buf[..len]).map(str::trim) {
        Ok("REFRESH") => Ok(Request::Refresh),
        _ => Ok(Request::Get),
    }
}

/// Serves one client: its line within [`IDLE`], the run loop's document,
/// written within [`WRITE`], then the close.
async fn serve(mut stream: tokio::net::UnixStream, requests: mpsc::Sender<Query>) {
    let request = tokio::time::timeout(IDLE, read_request(&mut stream))
        .await
        .unwrap_or(Err(Refused::Idle));
    let doc = match request {
        Ok(r) => {
            let (reply, answer) = oneshot::channel();
            let query = Query {
                refresh: r == Request::Refresh,
                reply,
            };
            if requests.send(query).await.is_err() {
                return;
            }
            match answer.await {
                Ok(doc) => doc.into_bytes(),
                Err(_) => return,
            }
        }
        Err(Refused::Gone) => return,
        Err(Refused::TooLong) => refusal(&format!(
            "request line longer than {MAX_LINE} bytes; send GET or REFRESH and a newline"
        )),
        Err(Refused::Idle) => refusal(&format!(
            "no request within {} s; send GET or REFRESH and a newline",
            IDLE.as_secs()
        )),
    };
    let _ = tokio::time::timeout(WRITE, async {
        stream.write_all(&doc).await?;
        stream.shutdown().await
    })
    .await;
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
    let mut doc = Vec::new();
    // A refusal may be followed by a reset (the server closed on what it
    // did not read): what came before it is the answer.
    if let Err(e) = s.read_to_end(&mut doc)
        && doc.is_empty()
    {
        return Err(e).with_context(|| format!("cannot read from {}", path.display()));
    }
    let doc = String::from_utf8(doc)
        .with_context(|| format!("{} answered something that is not text", path.display()))?;
    if let Some(why) = refused(&doc) {
        bail!("{} refused the request: {why}", path.display());
    }
    Ok(doc)
}

/// The reason in a refusal (`{"error":"..."}`), if `doc` is one.
fn refused(doc: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(doc).ok()?;
    Some(value.as_object()?.get("error")?.as_str()?.to_string())
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
    // tcpeekstat's rows: a name in 10 characters, a space, a number in 10,
    // so numbers end in one column. A longer name (`sessions_dropped`)
    // takes room from the number's field rather than pushing it out; only
    // a row that cannot fit (a long name and a huge count) widens them all.
    let items = || {
        filters
            .iter()
            .filter_map(|f| f.as_object())
            .flat_map(|f| f.values())
            .filter_map(|sections| sections.as_object())
            .flat_map(|sections| sections.values())
            .filter_map(|items| items.as_object())
            .flat_map(|items| items.iter())
    };
    let width = items()
        .map(|(k, v)| k.chars().count() + 1 + v.to_string().len())
        .fold(21, usize::max);
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
                    let field = width - item.chars().count();
                    out.push_str(&format!("     {item}{:>field$}\n", v.to_string()));
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

    /// The table's rows of numbers.
    fn rows(t: &str) -> Vec<&str> {
        t.lines().filter(|l| l.starts_with("     ")).collect()
    }

    #[test]
    fn long_names_and_numbers_keep_the_columns() {
        // tcpmon's long names: the numbers still end in tcpeekstat's column.
        let doc = r#"[{"RX":{"success":{"total":7,"dupsyn":0,"dupsynack":0}}},{"pcap":{"stats":{"recv":44,"drop":3,"ifdrop":0,"events_lost":12,"sessions_dropped":345}}}]"#;
        let t = table(doc).unwrap();
        assert_eq!(rows(&t).len(), 8, "{t}");
        assert!(rows(&t).iter().all(|r| r.len() == 26), "{t}");
        assert!(t.contains("     total               7\n"), "{t}");
        assert!(t.contains("     events_lost        12\n"), "{t}");
        assert!(t.contains("     sessions_dropped  345\n"), "{t}");
        // A row that cannot fit widens them all, still one column.
        let doc = r#"[{"RX":{"success":{"total":7}}},{"pcap":{"stats":{"recv":18446744073709551615,"sessions_dropped":1234567}}}]"#;
        let t = table(doc).unwrap();
        assert!(rows(&t).iter().all(|r| r.len() == 5 + 25), "{t}");
        assert!(t.contains("     sessions_dropped  1234567\n"), "{t}");
        assert!(t.contains("     recv 18446744073709551615\n"), "{t}");
        for row in rows(&t) {
            let (name, value) = row.trim().split_once(' ').unwrap();
            assert!(
                !name.is_empty() && value.trim().parse::<u64>().is_ok(),
                "{row:?}"
            );
        }
    }

    #[test]
    fn refusals_and_their_reasons() {
        assert_eq!(
            refused(r#"{"error":"too many clients"}"#).as_deref(),
            Some("too many clients")
        );
        assert_eq!(refused("[]"), None);
        assert_eq!(refused("nope"), None);
        let r = refusal("it \"broke\"");
        assert_eq!(r, b"{\"error\":\"it \\\"broke\\\"\"}\n");
    }

    async fn request(sent: &[u8]) -> Result<Request, Refused> {
        let (mut client, mut server) = tokio::net::UnixStream::pair().unwrap();
        client.write_all(sent).await.unwrap();
        drop(client);
        read_request(&mut server).await
    }

    #[tokio::test]
    async fn request_lines_are_bounded() {
        assert_eq!(request(b"GET\r\n").await, Ok(Request::Get));
        assert_eq!(request(b"REFRESH\n").await, Ok(Request::Refresh));
        assert_eq!(request(b"REFRESH").await, Ok(Request::Refresh));
        assert_eq!(request(b"anything\n").await, Ok(Request::Get));
        assert_eq!(request(b"").await, Err(Refused::Gone));
        let longest = [b"REFRESH".as_slice(), &[b' '; MAX_LINE - 8], b"\n"].concat();
        assert_eq!(longest.len(), MAX_LINE);
        assert_eq!(request(&longest).await, Ok(Request::Refresh));
        let over = [b"GET".as_slice(), &[b' '; MAX_LINE - 3], b"\n"].concat();
        assert_eq!(request(&over).await, Err(Refused::TooLong));
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
