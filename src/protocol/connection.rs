//! Connections to a run's Redis: reconnecting, checked against the password, and where the
//! server speaks RESP3 (Redis 6 and later) able to hear pyABC's `abc_msg_pubsub` on the same
//! connection its commands use.
//!
//! Hearing it is what lets the controller read a run without an analysis rarely: a master's
//! `start` wakes the run's poller as it is published, instead of waiting for the next read.
//! Under RESP2 a subscribed connection can send no other command, so a Redis older than 6
//! gets a RESP2 connection that is not subscribed, and is read at intervals instead.

use super::{Endpoint, ProtocolError, keys};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{
    ErrorKind, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, RedisConnectionInfo,
    RedisError,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::Notify;

/// What a connection of [`connect_listening`] hears on `abc_msg_pubsub`.
#[derive(Default)]
pub struct Publications {
    heard: Notify,
    subscribed: AtomicBool,
}

impl Publications {
    /// Whether messages reach [`Publications::heard`]: not for a Redis older than 6, nor
    /// before the first connection or after one failed.
    pub fn subscribed(&self) -> bool {
        self.subscribed.load(Ordering::Relaxed)
    }

    /// Resolves at the next message (pyABC's `start` of a generation, a `stop`) or
    /// resubscription after a reconnect (a message may have been missed in between); at once
    /// when one came since the last call.
    pub async fn heard(&self) {
        self.heard.notified().await
    }

    fn push(&self, push: PushInfo) {
        if matches!(push.kind, PushKind::Message | PushKind::Subscribe) {
            self.heard.notify_one();
        }
    }
}

/// Connects to a run's Redis (auto-reconnecting) and checks that it answers with this
/// password. Connection attempts time out after 5 s, commands after 10 s.
pub async fn connect(endpoint: &Endpoint) -> Result<ConnectionManager, ProtocolError> {
    open(endpoint, None).await.map(|(conn, _)| conn)
}

/// [`connect`], subscribed to `abc_msg_pubsub` where the server allows it (RESP3), with what
/// it hears going to `publications`. Subscribed again after every reconnect.
pub async fn connect_listening(
    endpoint: &Endpoint,
    publications: &Arc<Publications>,
) -> Result<ConnectionManager, ProtocolError> {
    publications.subscribed.store(false, Ordering::Relaxed);
    let (mut conn, protocol) = open(endpoint, Some(publications)).await?;
    if protocol == ProtocolVersion::RESP3 {
        match conn.subscribe(keys::MSG).await {
            Ok(()) => publications.subscribed.store(true, Ordering::Relaxed),
            // e.g. an ACL user without pub/sub rights: still readable, at intervals
            Err(err) => tracing::info!(redis = %endpoint, error = %err,
                "cannot subscribe to {}; reading this Redis at intervals", keys::MSG),
        }
    }
    Ok(conn)
}

async fn open(
    endpoint: &Endpoint,
    publications: Option<&Arc<Publications>>,
) -> Result<(ConnectionManager, ProtocolVersion), ProtocolError> {
    let server = format!("Redis at {endpoint}");
    let (mut conn, protocol) = match manager(endpoint, ProtocolVersion::RESP3, publications).await {
        Ok(conn) => (conn, ProtocolVersion::RESP3),
        Err(err) if refuses_resp3(&err) => {
            tracing::debug!(redis = %endpoint, error = %err, "RESP3 refused; using RESP2");
            let conn = manager(endpoint, ProtocolVersion::RESP2, None)
                .await
                .map_err(|err| ProtocolError::from_redis(err, &server))?;
            (conn, ProtocolVersion::RESP2)
        }
        Err(err) => return Err(ProtocolError::from_redis(err, &server)),
    };
    let _: String = redis::cmd("PING")
        .query_async(&mut conn)
        .await
        .map_err(|err| ProtocolError::from_redis(err, &server))?;
    Ok((conn, protocol))
}

async fn manager(
    endpoint: &Endpoint,
    protocol: ProtocolVersion,
    publications: Option<&Arc<Publications>>,
) -> Result<ConnectionManager, RedisError> {
    let mut settings = RedisConnectionInfo::default().set_protocol(protocol);
    if let Some(password) = &endpoint.password {
        settings = settings.set_password(password);
    }
    let info = redis::ConnectionAddr::Tcp(endpoint.host.clone(), endpoint.port)
        .into_connection_info()?
        .set_redis_settings(settings);
    let client = redis::Client::open(info)?;
    let mut config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(10)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(1));
    if let Some(publications) = publications {
        let publications = publications.clone();
        config = config
            .set_push_sender(move |push| {
                publications.push(push);
                Ok::<(), std::convert::Infallible>(())
            })
            .set_automatic_resubscription();
    }
    ConnectionManager::new_with_config(client, config).await
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
