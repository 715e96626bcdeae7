//! A run's connection hears pyABC's `abc_msg_pubsub` on the connection its commands use
//! (RESP3), again after its Redis restarts; a Redis that cannot speak RESP3 is still read.

use crate::set_all;
use crate::support::redis::{connect, server, snapshot};
use abc_operator::local::redis_server::{RedisServer, RedisServerOptions};
use abc_operator::protocol::{self, Publications, keys};
use std::sync::Arc;
use std::time::Duration;

/// Publishes pyABC's `start`, as a master does at every generation.
async fn publish_start(redis: &RedisServer) {
    let mut other = connect(redis).await;
    let _: i64 = redis::cmd("PUBLISH")
        .arg(keys::MSG)
        .arg(keys::START)
        .query_async(&mut other)
        .await
        .unwrap();
}

/// Waits (bounded) until the connection heard something.
async fn wait_heard(publications: &Publications, what: &str) {
    tokio::time::timeout(Duration::from_secs(10), publications.heard())
        .await
        .unwrap_or_else(|_| panic!("{what} not heard within 10 s"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_is_heard_on_the_connection_that_reads_the_run_also_after_a_restart() {
    let mut redis = server();
    let publications = Arc::new(Publications::default());
    let mut conn = protocol::connect_listening(&redis.endpoint(), &publications)
        .await
        .unwrap();
    assert!(publications.subscribed());
    wait_heard(&publications, "the subscription").await;

    publish_start(&redis).await;
    wait_heard(&publications, "a start").await;
    // The same connection still answers commands, with the replies RESP2 gives.
    let _: () = redis::pipe()
        .set(keys::ANALYSIS_ID, "ana")
        .set("generation_ana", 3)
        .query_async(&mut conn)
        .await
        .unwrap();
    let snap = snapshot(&mut conn).await;
    assert_eq!(snap.analysis_id.as_deref(), Some("ana"));
    assert_eq!(snap.generation, Some(3));
    // A start published by a script on this very connection (a repair that gives work back
    // does) arrives with the script's reply, and is heard too.
    let _: i64 = redis::Script::new("return redis.call('PUBLISH', KEYS[1], ARGV[1])")
        .key(keys::MSG)
        .arg(keys::START)
        .invoke_async(&mut conn)
        .await
        .unwrap();
    wait_heard(&publications, "a start published along with a reply").await;

    // Redis restarts (same port and password, empty): the connection subscribes again by
    // itself, and says so, since a start may have been missed while it was away.
    let options = RedisServerOptions {
        port: Some(redis.port()),
        password: Some(redis.password().to_string()),
        ..RedisServerOptions::default()
    };
    redis.stop().unwrap();
    let redis = RedisServer::start(options).unwrap();
    tokio::time::timeout(Duration::from_secs(30), async {
        // a read fails, and makes the connection reconnect
        while protocol::Snapshot::read(&mut conn).await.is_err() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the connection reads again within 30 s of the restart");
    wait_heard(&publications, "the resubscription").await;
    let mut other = connect(&redis).await;
    let (_, subscribers): (String, i64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(keys::MSG)
        .query_async(&mut other)
        .await
        .unwrap();
    assert_eq!(subscribers, 1, "subscribed again after the restart");
    publish_start(&redis).await;
    wait_heard(&publications, "a start after the restart").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_without_resp3_is_read_but_not_heard() {
    // Redis 5 and older have no HELLO; here it is renamed away, which they answer alike.
    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("redis-server-without-hello");
    std::fs::write(
        &program,
        "#!/bin/sh\nexec redis-server \"$1\" --rename-command HELLO \"\"\n",
    )
    .unwrap();
    std::fs::set_permissions(
        &program,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let redis = RedisServer::start(RedisServerOptions {
        program,
        ..RedisServerOptions::default()
    })
    .unwrap();
    let publications = Arc::new(Publications::default());
    let mut conn = protocol::connect_listening(&redis.endpoint(), &publications)
        .await
        .unwrap();
    assert!(!publications.subscribed());
    set_all(&mut conn, &[(keys::ANALYSIS_ID, "ana")]).await;
    assert_eq!(
        snapshot(&mut conn).await.analysis_id.as_deref(),
        Some("ana")
    );
    // and a wrong password is still named as such, not as a protocol problem
    let mut endpoint = redis.endpoint();
    endpoint.password = Some("not-the-password".into());
    let err = protocol::connect_listening(&endpoint, &publications)
        .await
        .unwrap_err();
    assert!(
        matches!(err, protocol::ProtocolError::WrongPassword { .. }),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_its_caller_gave_up_on_never_answers_the_next_one() {
    let redis = server();
    let publications = Arc::new(Publications::default());
    let mut conn = protocol::connect_listening(&redis.endpoint(), &publications)
        .await
        .unwrap();
    wait_heard(&publications, "the subscription").await;
    // The controller bounds every call (3 s); here a BLPOP is cut off long before its reply
    // (nil, after 1 s) comes.
    let cut_off = tokio::time::timeout(
        Duration::from_millis(100),
        redis::cmd("BLPOP")
            .arg("nothing-here")
            .arg(1)
            .query_async::<Option<(String, String)>>(&mut conn),
    )
    .await;
    assert!(cut_off.is_err(), "BLPOP returned before its timeout");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    set_all(&mut conn, &[(keys::ANALYSIS_ID, "ana")]).await;
    let id: Option<String> = redis::cmd("GET")
        .arg(keys::ANALYSIS_ID)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        id.as_deref(),
        Some("ana"),
        "each reply answers its own command"
    );
    // and the new connection is subscribed again, and says so
    wait_heard(&publications, "the resubscription").await;
    assert!(publications.subscribed());
    publish_start(&redis).await;
    wait_heard(&publications, "a start").await;
}
