//! Connections to a run's Redis: reconnecting, checked against the password, and where the
//! server speaks RESP3 (Redis 6 and later) able to hear pyABC's `abc_msg_pubsub` on the same
//! connection its commands use.
//!
//! Hearing it is what lets the controller read a run without an analysis rarely: a master's
//! `start` wakes the run's poller as it is published, instead of waiting for the next read.
//! Under RESP2 a subscribed connection can send no other command, so a Redis older than 6
//! gets a RESP2 connection that is not subscribed, and is read at intervals instead.
//!
//! The controller holds one connection per run, a thousand at a time, and each spends most of
//! its life waiting. redis-rs' own connections keep two 8 KiB buffers and a driver task each
//! (22 MiB at 1,000 runs, measured); this one keeps a socket and a lock, reads each reply
//! into a buffer that lives only as long as the command, and hears messages by waiting for
//! the socket to become readable. Commands on one connection take turns (no pipelining
//! across callers): a run's few commands a second never queue behind each other for long.
//! Replies are parsed by redis-rs ([`redis::parse_redis_value`]); the commands and scripts
//! of the protocol modules use it through [`redis::aio::ConnectionLike`].

use super::{Endpoint, ProtocolError, frame, keys};
use redis::{Cmd, ErrorKind, Pipeline, PushKind, RedisError, RedisFuture, RedisResult, Value};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{Mutex, Notify};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// What a read asks the socket for at least: most replies of the protocol fit.
const READ_CHUNK: usize = 512;
/// The most a connection holds of replies not yet whole. The largest reply abc-operator asks
/// for, a snapshot with 10,000 ledgers, is a few MiB; a server sending more (a huge value, or
/// no end at all) gets its connection dropped instead of the controller's memory.
pub const MAX_REPLY_BYTES: usize = 32 << 20;

/// What a connection of [`connect_listening`] hears on `abc_msg_pubsub`.
#[derive(Default)]
pub struct Publications {
    heard: Notify,
    subscribed: AtomicBool,
    /// The connection that listens for these (the latest, when it was replaced).
    connection: std::sync::Mutex<Weak<Shared>>,
}

impl Publications {
    /// Whether messages reach [`Publications::heard`]: not for a Redis older than 6, nor
    /// before the first connection or after one failed.
    pub fn subscribed(&self) -> bool {
        self.subscribed.load(Ordering::Relaxed)
    }

    /// Resolves at the next message (pyABC's `start` of a generation, a `stop`), when the
    /// connection is lost or subscribed again after a reconnect (a message may have been
    /// missed in between); at once when one came since the last call.
    pub async fn heard(&self) {
        let connection = self.connection.lock().unwrap().upgrade();
        match connection {
            Some(shared) => tokio::select! {
                () = self.heard.notified() => {}
                () = shared.listen() => {}
            },
            None => self.heard.notified().await,
        }
    }
}

/// A connection to one Redis, shared by cloning. A lost connection fails the command that
/// finds it lost; the next command connects again (and subscribes again).
#[derive(Clone)]
pub struct Connection {
    shared: Arc<Shared>,
}

impl Connection {
    pub fn endpoint(&self) -> &Endpoint {
        &self.shared.endpoint
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("endpoint", &self.shared.endpoint)
            .finish_non_exhaustive()
    }
}

struct Shared {
    endpoint: Endpoint,
    publications: Option<Arc<Publications>>,
    /// `None` until connected, and after the connection was lost or a command was cut off
    /// (its reply would be read as the next command's).
    link: Mutex<Option<Link>>,
}

struct Link {
    socket: Arc<TcpStream>,
    /// Bytes read past the last whole reply: a push that arrived with it, or part of one.
    pending: Vec<u8>,
}

/// Connects to a run's Redis and checks that it answers with this password. Connecting
/// times out after 5 s, a command after 10 s.
pub async fn connect(endpoint: &Endpoint) -> Result<Connection, ProtocolError> {
    open(endpoint, None).await
}

/// [`connect`], subscribed to `abc_msg_pubsub` where the server allows it (RESP3), with what
/// it hears going to `publications`. Subscribed again after every reconnect.
pub async fn connect_listening(
    endpoint: &Endpoint,
    publications: &Arc<Publications>,
) -> Result<Connection, ProtocolError> {
    open(endpoint, Some(publications.clone())).await
}

async fn open(
    endpoint: &Endpoint,
    publications: Option<Arc<Publications>>,
) -> Result<Connection, ProtocolError> {
    let shared = Arc::new(Shared {
        endpoint: endpoint.clone(),
        publications,
        link: Mutex::new(None),
    });
    if let Some(publications) = &shared.publications {
        publications.subscribed.store(false, Ordering::Relaxed);
        *publications.connection.lock().unwrap() = Arc::downgrade(&shared);
    }
    let link = shared
        .connect()
        .await
        .map_err(|err| ProtocolError::from_redis(err, &format!("Redis at {endpoint}")))?;
    *shared.link.lock().await = Some(link);
    Ok(Connection { shared })
}

impl Shared {
    /// Opens the socket, says RESP3 where the server can (else RESP2), authenticates, and
    /// subscribes when listening.
    async fn connect(&self) -> RedisResult<Link> {
        let endpoint = &self.endpoint;
        let socket = tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect((endpoint.host.as_str(), endpoint.port)),
        )
        .await
        .map_err(|_| timed_out("connecting"))??;
        socket.set_nodelay(true)?;
        let mut link = Link {
            socket: Arc::new(socket),
            pending: Vec::new(),
        };
        tokio::time::timeout(RESPONSE_TIMEOUT, self.handshake(&mut link))
            .await
            .unwrap_or_else(|_| Err(timed_out("waiting for the handshake")))?;
        Ok(link)
    }

    async fn handshake(&self, link: &mut Link) -> RedisResult<()> {
        let endpoint = &self.endpoint;
        let mut hello = redis::cmd("HELLO");
        hello.arg(3);
        if let Some(password) = &endpoint.password {
            hello.arg("AUTH").arg("default").arg(password);
        }
        let resp3 = match link.command(&hello).await?.extract_error() {
            Ok(_) => true,
            Err(err) if refuses_resp3(&err) => {
                tracing::debug!(redis = %endpoint, error = %err, "RESP3 refused; using RESP2");
                if let Some(password) = &endpoint.password {
                    let auth = redis::cmd("AUTH").arg(password).clone();
                    // Redis 5 says "ERR invalid password", with no code of its own
                    link.command(&auth).await?.extract_error().map_err(|err| {
                        RedisError::from((
                            ErrorKind::AuthenticationFailed,
                            "the password was refused",
                            err.to_string(),
                        ))
                    })?;
                }
                false
            }
            Err(err) => return Err(err),
        };
        if let Some(publications) = &self.publications
            && resp3
        {
            let subscribe = redis::cmd("SUBSCRIBE").arg(keys::MSG).clone();
            link.send(&subscribe.get_packed_command()).await?;
            match link.subscription().await? {
                Ok(()) => {
                    publications.subscribed.store(true, Ordering::Relaxed);
                    // a message may have been missed while not subscribed
                    publications.heard.notify_one();
                }
                // e.g. an ACL user without pub/sub rights: still readable, at intervals
                Err(err) => tracing::info!(redis = %endpoint, error = %err,
                    "cannot subscribe to {}; reading this Redis at intervals", keys::MSG),
            }
        }
        Ok(())
    }

    /// Sends `packed` (`replies` commands) and reads their replies, connecting first if
    /// needed. A link that fails or is cut off mid-command is dropped, never reused.
    async fn request(&self, packed: &[u8], replies: usize) -> RedisResult<Vec<Value>> {
        let mut slot = self.link.lock().await;
        let mut link = match slot.take() {
            Some(link) => link,
            None => self.connect().await?,
        };
        // Until the replies are in, the link is out of its slot: a failure, or the caller
        // dropping this future (its own timeout), leaves the connection lost.
        let mut cut_off = CutOff(Some(self));
        let exchange = async {
            link.send(packed).await?;
            link.replies(replies, self.publications.as_deref()).await
        };
        let values = tokio::time::timeout(RESPONSE_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| Err(timed_out("waiting for a reply")))?;
        cut_off.0 = None;
        *slot = Some(link);
        Ok(values)
    }

    /// Waits until a message is heard on the idle connection or the connection is lost.
    /// Never resolves without a connection (then only a reconnect, through
    /// [`Publications::heard`]'s notification, ends the wait).
    async fn listen(&self) {
        loop {
            let socket = match &*self.link.lock().await {
                Some(link) => link.socket.clone(),
                None => return std::future::pending().await,
            };
            if socket.readable().await.is_err() {
                return std::future::pending().await;
            }
            // A command in flight reads (and reports) whatever arrived; wait for it.
            let mut slot = self.link.lock().await;
            let Some(link) = slot
                .as_mut()
                .filter(|link| Arc::ptr_eq(&link.socket, &socket))
            else {
                continue;
            };
            match link.drain() {
                Ok(false) => continue,
                Ok(true) => return,
                Err(err) => {
                    tracing::debug!(redis = %self.endpoint, error = %err, "connection lost");
                    *slot = None;
                    self.lost();
                    return;
                }
            }
        }
    }

    fn lost(&self) {
        if let Some(publications) = &self.publications {
            publications.subscribed.store(false, Ordering::Relaxed);
        }
    }
}

/// Marks its connection lost when dropped armed.
struct CutOff<'a>(Option<&'a Shared>);

impl Drop for CutOff<'_> {
    fn drop(&mut self) {
        if let Some(shared) = self.0 {
            shared.lost();
        }
    }
}

impl Link {
    /// One command of the handshake and its reply (the reply may be an error value).
    async fn command(&mut self, cmd: &Cmd) -> RedisResult<Value> {
        self.send(&cmd.get_packed_command()).await?;
        let mut replies = self.replies(1, None).await?;
        Ok(replies.remove(0))
    }

    async fn send(&self, mut bytes: &[u8]) -> RedisResult<()> {
        while !bytes.is_empty() {
            self.socket.writable().await?;
            match self.socket.try_write(bytes) {
                Ok(written) => bytes = &bytes[written..],
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => return Err(err.into()),
            }
        }
        Ok(())
    }

    /// Reads `count` replies; a message heard in between wakes `publications`.
    async fn replies(
        &mut self,
        count: usize,
        publications: Option<&Publications>,
    ) -> RedisResult<Vec<Value>> {
        let mut values = Vec::with_capacity(count);
        loop {
            if take_replies(&mut self.pending, &mut values, count)?
                && let Some(publications) = publications
            {
                publications.heard.notify_one();
            }
            if values.len() == count {
                return Ok(values);
            }
            self.read_some().await?;
        }
    }

    /// Waits for the subscription's confirmation (a push under RESP3), or its refusal.
    async fn subscription(&mut self) -> RedisResult<Result<(), RedisError>> {
        let mut refusal = Vec::with_capacity(1);
        loop {
            if take_replies(&mut self.pending, &mut refusal, 1)? {
                return Ok(Ok(()));
            }
            if let Some(reply) = refusal.pop() {
                return Ok(reply.extract_error().map(drop));
            }
            self.read_some().await?;
        }
    }

    /// Takes what arrived on an idle connection without waiting; true when a message (or
    /// subscription) was among it.
    fn drain(&mut self) -> RedisResult<bool> {
        while self.try_read()? {}
        take_replies(&mut self.pending, &mut Vec::new(), 0)
    }

    /// Waits until some bytes arrived, into [`Link::pending`].
    async fn read_some(&mut self) -> RedisResult<()> {
        loop {
            self.socket.readable().await?;
            if self.try_read()? {
                return Ok(());
            }
        }
    }

    /// Reads what the socket has without waiting; false when it had nothing.
    fn try_read(&mut self) -> RedisResult<bool> {
        if self.pending.len() >= MAX_REPLY_BYTES {
            return Err(RedisError::from((
                ErrorKind::Parse,
                "reply refused",
                format!(
                    "it is larger than {} MiB, which no reply abc-operator asks for is",
                    MAX_REPLY_BYTES >> 20
                ),
            )));
        }
        self.pending.reserve(READ_CHUNK);
        match self.socket.try_read_buf(&mut self.pending) {
            Ok(0) => Err(closed()),
            Ok(_) => Ok(true),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(err) => Err(err.into()),
        }
    }
}

/// Takes the whole replies off the front of `buf`, up to `count` of them into `replies`;
/// true when a message or a subscription was among them. Any other reply answers nothing
/// that was asked: the connection is out of step.
fn take_replies(buf: &mut Vec<u8>, replies: &mut Vec<Value>, count: usize) -> RedisResult<bool> {
    let mut heard = false;
    let mut taken = 0;
    while let Some(len) = frame::reply_len(&buf[taken..])? {
        match redis::parse_redis_value(&buf[taken..taken + len])? {
            Value::Push { kind, .. } => {
                heard |= matches!(kind, PushKind::Message | PushKind::Subscribe)
            }
            reply if replies.len() < count => replies.push(reply),
            _ => {
                return Err(RedisError::from((
                    ErrorKind::Parse,
                    "a reply nobody asked for",
                )));
            }
        }
        taken += len;
    }
    buf.drain(..taken);
    // Kept between commands only while part of a push is in it.
    if buf.is_empty() {
        *buf = Vec::new();
    }
    Ok(heard)
}

impl redis::aio::ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let mut replies = self.shared.request(&cmd.get_packed_command(), 1).await?;
            Ok(replies.remove(0))
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let packed = pipeline.get_packed_pipeline();
            let mut replies = self.shared.request(&packed, offset + count).await?;
            Ok(replies.split_off(offset))
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
}

fn timed_out(what: &str) -> RedisError {
    io::Error::new(io::ErrorKind::TimedOut, format!("timed out {what}")).into()
}

fn closed() -> RedisError {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the server closed the connection",
    )
    .into()
}

/// The server answered RESP3's `HELLO 3` with "unknown command" (Redis 5 and older, or HELLO
/// renamed away). Not a password error: those mean the same under RESP2.
fn refuses_resp3(err: &RedisError) -> bool {
    err.kind() == ErrorKind::RESP3NotSupported
        || (!matches!(err.code(), Some("NOAUTH" | "WRONGPASS"))
            && err.detail().is_some_and(|detail| {
                detail.contains("unknown command") && detail.contains("HELLO")
            }))
}
