//! A blocking xenstore client for dom0: the repository's `xenstore` crate's wire
//! format over xenstored's Unix socket, or over /dev/xen/xenbus where there is no
//! socket (the same order libxenstore tries). Transactions are bounded: a commit that
//! keeps conflicting gives up after [`RetryPolicy::max_attempts`].

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;
use xenstore::decoder::Decoder;
use xenstore::reply::{self, Errno, XsError};
use xenstore::transaction::RetryPolicy;
use xenstore::wire::{self, Message, MsgType, Permission, Request};

/// Where xenstored listens, newest first; then the kernel's device.
const SOCKETS: &[&str] = &["/run/xenstored/socket", "/var/run/xenstored/socket"];
const DEVICE: &str = "/dev/xen/xenbus";
/// How long one request may wait for its reply.
const REPLY_LIMIT: Duration = Duration::from_secs(30);

/// Why a xenstore request failed.
#[derive(Debug, thiserror::Error)]
pub enum XsClientError {
    #[error("cannot reach xenstored (sockets {SOCKETS:?}, {DEVICE}): {0}")]
    Connect(std::io::Error),
    #[error("xenstore connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("xenstore closed the connection")]
    Closed,
    #[error("xenstored sent no reply within {} s", REPLY_LIMIT.as_secs())]
    NoReply,
    #[error("xenstore sent a broken message: {0:?}")]
    Framing(xenstore::decoder::DecodeError),
    #[error("cannot encode a request for {path}: {error}")]
    Encode { path: String, error: wire::EncodeError },
    #[error("{op} {path}: {error}")]
    Request { op: &'static str, path: String, error: XsError },
    #[error("a transaction kept conflicting with other writers ({attempts} attempts)")]
    TooManyConflicts { attempts: u32 },
}

impl XsClientError {
    fn is_conflict(&self) -> bool {
        matches!(self, XsClientError::Request { error: XsError::Errno(Errno::EAGAIN), .. })
    }
}

enum Connection {
    Socket(UnixStream),
    Device(File),
}

impl Connection {
    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Connection::Socket(s) => s.write_all(bytes),
            Connection::Device(f) => f.write_all(bytes),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Connection::Socket(s) => s.read(buf),
            Connection::Device(f) => f.read(buf),
        }
    }
}

/// A transaction id; [`Tx::NONE`] outside a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tx(u32);

impl Tx {
    pub const NONE: Tx = Tx(0);
}

/// One connection to xenstored.
pub struct Xenstore {
    connection: Connection,
    decoder: Decoder,
    next_req_id: u32,
    buffered: Vec<u8>,
}

impl Xenstore {
    pub fn open() -> Result<Xenstore, XsClientError> {
        let connection = match SOCKETS.iter().find_map(|s| UnixStream::connect(s).ok()) {
            Some(stream) => {
                stream.set_read_timeout(Some(REPLY_LIMIT))?;
                Connection::Socket(stream)
            }
            None => Connection::Device(
                OpenOptions::new().read(true).write(true).open(DEVICE).map_err(XsClientError::Connect)?,
            ),
        };
        Ok(Xenstore { connection, decoder: Decoder::new(), next_req_id: 1, buffered: Vec::new() })
    }

    /// A client on an already connected stream (the host tests' in-memory xenstored).
    pub fn on_stream(stream: UnixStream) -> Xenstore {
        Xenstore {
            connection: Connection::Socket(stream),
            decoder: Decoder::new(),
            next_req_id: 1,
            buffered: Vec::new(),
        }
    }

    /// Sends `request` and returns its reply (watch events in between are dropped:
    /// this client sets no watches).
    fn exchange(&mut self, tx: Tx, request: Request, path: &str) -> Result<Message, XsClientError> {
        self.exchange_with(|req_id| {
            request.encode(req_id, tx.0).map_err(|error| XsClientError::Encode { path: path.to_string(), error })
        })
    }

    /// Sends the message `encode` makes with a fresh request id; returns its reply.
    fn exchange_with(
        &mut self,
        encode: impl FnOnce(u32) -> Result<Vec<u8>, XsClientError>,
    ) -> Result<Message, XsClientError> {
        let req_id = self.next_req_id;
        self.next_req_id = self.next_req_id.wrapping_add(1).max(1);
        let bytes = encode(req_id)?;
        self.connection.write_all(&bytes)?;
        loop {
            if let Some(message) = self.decoder.next_message() {
                let message = message.map_err(XsClientError::Framing)?;
                if message.header.msg_type == MsgType::WatchEvent || message.header.req_id != req_id {
                    continue;
                }
                return Ok(message);
            }
            if self.buffered.is_empty() {
                let mut chunk = [0u8; 4096];
                let n = self.connection.read(&mut chunk).map_err(|e| match e.kind() {
                    // The socket's read timeout (SO_RCVTIMEO) ends a read with EAGAIN.
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => XsClientError::NoReply,
                    _ => XsClientError::Io(e),
                })?;
                if n == 0 {
                    return Err(XsClientError::Closed);
                }
                self.buffered.extend_from_slice(&chunk[..n]);
            }
            let taken = self.decoder.push(&self.buffered);
            self.buffered.drain(..taken);
        }
    }

    /// The value at `path`, None if it does not exist.
    pub fn read(&mut self, tx: Tx, path: &str) -> Result<Option<String>, XsClientError> {
        let reply = self.exchange(tx, Request::Read { path }, path)?;
        match reply::read(&reply) {
            Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
            Err(XsError::Errno(Errno::ENOENT)) => Ok(None),
            Err(error) => Err(XsClientError::Request { op: "read", path: path.to_string(), error }),
        }
    }

    /// The children of `path`, empty if it does not exist.
    pub fn directory(&mut self, tx: Tx, path: &str) -> Result<Vec<String>, XsClientError> {
        let reply = self.exchange(tx, Request::Directory { path }, path)?;
        match reply::directory(&reply) {
            Ok(names) => Ok(names),
            Err(XsError::Errno(Errno::ENOENT)) => Ok(Vec::new()),
            Err(error) => Err(XsClientError::Request { op: "directory", path: path.to_string(), error }),
        }
    }

    pub fn write(&mut self, tx: Tx, path: &str, value: &str) -> Result<(), XsClientError> {
        let reply = self.exchange(tx, Request::Write { path, value: value.as_bytes() }, path)?;
        reply::ok(&reply, MsgType::Write).map_err(|error| XsClientError::Request {
            op: "write",
            path: path.into(),
            error,
        })
    }

    /// Removes `path` and everything under it; a path that is already gone is fine.
    pub fn rm(&mut self, tx: Tx, path: &str) -> Result<(), XsClientError> {
        let reply = self.exchange(tx, Request::Rm { path }, path)?;
        match reply::ok(&reply, MsgType::Rm) {
            Ok(()) | Err(XsError::Errno(Errno::ENOENT)) => Ok(()),
            Err(error) => Err(XsClientError::Request { op: "rm", path: path.to_string(), error }),
        }
    }

    /// XS_RESUME of `domid`: xenstored forgets that the domain had shut down (as
    /// libxl's resume does after `xc_domain_resume`), so its next shutdown fires
    /// @releaseDomain again.
    pub fn resume_domain(&mut self, domid: u32) -> Result<(), XsClientError> {
        let path = format!("{domid}");
        let reply = self.exchange_with(|req_id| {
            wire::encode(MsgType::Resume, req_id, 0, &[path.as_bytes(), b"\0"])
                .map_err(|error| XsClientError::Encode { path: path.clone(), error })
        })?;
        reply::ok(&reply, MsgType::Resume).map_err(|error| XsClientError::Request { op: "resume", path, error })
    }

    pub fn mkdir(&mut self, tx: Tx, path: &str) -> Result<(), XsClientError> {
        let reply = self.exchange(tx, Request::Mkdir { path }, path)?;
        reply::ok(&reply, MsgType::Mkdir).map_err(|error| XsClientError::Request {
            op: "mkdir",
            path: path.into(),
            error,
        })
    }

    pub fn set_perms(&mut self, tx: Tx, path: &str, permissions: &[Permission]) -> Result<(), XsClientError> {
        let reply = self.exchange(tx, Request::SetPerms { path, permissions }, path)?;
        reply::ok(&reply, MsgType::SetPerms).map_err(|error| XsClientError::Request {
            op: "set-perms",
            path: path.into(),
            error,
        })
    }

    /// Runs `body` in a transaction and commits it; a commit that conflicts (EAGAIN)
    /// runs `body` again, at most `policy.max_attempts` times in all. A `body` that
    /// fails abandons its transaction.
    pub fn transaction<T>(
        &mut self,
        policy: RetryPolicy,
        mut body: impl FnMut(&mut Xenstore, Tx) -> Result<T, XsClientError>,
    ) -> Result<T, XsClientError> {
        for attempt in 1..=policy.max_attempts {
            let reply = self.exchange(Tx::NONE, Request::TransactionStart, "(transaction start)")?;
            let tx = Tx(reply::transaction_start(&reply).map_err(|error| XsClientError::Request {
                op: "transaction-start",
                path: String::new(),
                error,
            })?);
            let value = match body(self, tx) {
                Ok(value) => value,
                Err(error) => {
                    let _ = self.exchange(tx, Request::TransactionEnd { commit: false }, "(transaction abort)");
                    if error.is_conflict() && attempt < policy.max_attempts {
                        continue;
                    }
                    return Err(error);
                }
            };
            let reply = self.exchange(tx, Request::TransactionEnd { commit: true }, "(transaction commit)")?;
            match reply::ok(&reply, MsgType::TransactionEnd) {
                Ok(()) => return Ok(value),
                Err(XsError::Errno(Errno::EAGAIN)) => {
                    std::thread::sleep(Duration::from_millis(10 * u64::from(attempt)))
                }
                Err(error) => return Err(XsClientError::Request { op: "transaction-end", path: String::new(), error }),
            }
        }
        Err(XsClientError::TooManyConflicts { attempts: policy.max_attempts })
    }
}

/// The host tests' xenstored: the `xenstore` crate's in-memory one, served to a
/// [`Xenstore`] client over a socket pair by a thread.
#[cfg(test)]
pub mod sim_server {
    use super::Xenstore;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::thread::JoinHandle;
    use xenstore::sim::Sim;

    /// A dom0 client of `sim`; the thread gives the sim back when the client is dropped.
    pub fn serve(sim: Sim) -> (Xenstore, JoinHandle<Sim>) {
        serve_with(sim, |_| {})
    }

    /// [`serve`], with `others` run before and after each request: the other parties
    /// (backends, hotplug scripts) acting on the store.
    pub fn serve_with(mut sim: Sim, mut others: impl FnMut(&mut Sim) + Send + 'static) -> (Xenstore, JoinHandle<Sim>) {
        let (client, mut server) = UnixStream::pair().expect("socket pair");
        let thread = std::thread::spawn(move || {
            let connection = sim.connect(0);
            let mut chunk = [0u8; 4096];
            while let Ok(n) = server.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                others(&mut sim);
                sim.send(connection, &chunk[..n]);
                others(&mut sim);
                let out = sim.receive(connection);
                if !out.is_empty() && server.write_all(&out).is_err() {
                    break;
                }
            }
            sim
        });
        (Xenstore::on_stream(client), thread)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xenstore::sim::Sim;

    #[test]
    fn reads_writes_and_missing_nodes() {
        let (mut xs, thread) = sim_server::serve(Sim::new());
        assert_eq!(xs.read(Tx::NONE, "/local/domain/3/name").unwrap(), None);
        xs.write(Tx::NONE, "/local/domain/3/name", "guest").unwrap();
        assert_eq!(xs.read(Tx::NONE, "/local/domain/3/name").unwrap().as_deref(), Some("guest"));
        assert_eq!(xs.directory(Tx::NONE, "/local/domain").unwrap(), ["0", "3"]);
        assert_eq!(xs.directory(Tx::NONE, "/nowhere").unwrap(), Vec::<String>::new());
        xs.rm(Tx::NONE, "/local/domain/3").unwrap();
        xs.rm(Tx::NONE, "/local/domain/3").unwrap();
        assert_eq!(xs.read(Tx::NONE, "/local/domain/3/name").unwrap(), None);
        drop(xs);
        assert!(thread.join().unwrap().read("/local/domain/3").is_none());
    }

    #[test]
    fn a_conflicting_commit_is_redone_a_bounded_number_of_times() {
        let mut sim = Sim::new();
        sim.fail_next_commits_with_eagain(2);
        let (mut xs, thread) = sim_server::serve(sim);
        let mut attempts = 0;
        xs.transaction(RetryPolicy::default(), |xs, tx| {
            attempts += 1;
            xs.write(tx, "/a", "1")?;
            xs.write(tx, "/b", "2")
        })
        .unwrap();
        assert_eq!(attempts, 3);
        drop(xs);
        let mut sim = thread.join().unwrap();
        assert_eq!(sim.read("/b").as_deref(), Some(&b"2"[..]));

        sim.fail_commits_with_eagain_forever();
        let (mut xs, thread) = sim_server::serve(sim);
        let mut attempts = 0;
        let result = xs.transaction(RetryPolicy { max_attempts: 4 }, |xs, tx| {
            attempts += 1;
            xs.write(tx, "/c", "3")
        });
        assert!(matches!(result, Err(XsClientError::TooManyConflicts { attempts: 4 })), "{result:?}");
        assert_eq!(attempts, 4);
        drop(xs);
        assert!(thread.join().unwrap().read("/c").is_none());
    }

    /// XS_RESUME goes out as one framed request whose answer is read: the in-memory
    /// xenstored does not implement it and says so (ENOSYS), and the connection
    /// still works afterwards.
    #[test]
    fn resume_is_sent_and_answered() {
        let (mut xs, thread) = sim_server::serve(Sim::new());
        let result = xs.resume_domain(3);
        assert!(
            matches!(&result, Err(XsClientError::Request { op: "resume", path, error: XsError::Errno(Errno::ENOSYS) }) if path == "3"),
            "{result:?}"
        );
        xs.write(Tx::NONE, "/after", "1").unwrap();
        drop(xs);
        assert_eq!(thread.join().unwrap().read("/after").as_deref(), Some(&b"1"[..]));
    }

    #[test]
    fn a_failing_body_abandons_its_transaction() {
        let (mut xs, thread) = sim_server::serve(Sim::new());
        let result = xs.transaction(RetryPolicy::default(), |xs, tx| {
            xs.write(tx, "/partial", "1")?;
            xs.write(tx, "", "bad path")
        });
        assert!(matches!(result, Err(XsClientError::Encode { .. })), "{result:?}");
        drop(xs);
        assert!(thread.join().unwrap().read("/partial").is_none());
    }

    #[test]
    fn a_reply_that_never_comes_is_named_as_such() {
        // xenstored that takes the request and never answers: the socket's read
        // timeout ends the wait with EAGAIN, which must read as "no reply".
        let (client, _server) = UnixStream::pair().expect("socket pair");
        client.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut xs = Xenstore::on_stream(client);
        let result = xs.read(Tx::NONE, "/local/domain/3/name");
        assert!(matches!(result, Err(XsClientError::NoReply)), "{result:?}");
        assert_eq!(result.unwrap_err().to_string(), "xenstored sent no reply within 30 s");
    }
}
