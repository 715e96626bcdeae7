//! Errors name their cause: a wrong or missing password, something that is not Redis, nothing
//! on the port, a Redis that holds something else than pyABC's data.

use crate::support::redis::{connect, server};
use crate::{put_ledger, set_all};
use abc_operator::protocol::{self, ProtocolError, Snapshot, repair_lost_worker};
use redis::AsyncCommands;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_their_cause() {
    let redis = server();
    let mut endpoint = redis.endpoint();

    endpoint.password = Some("not-the-password".into());
    let err = protocol::connect(&endpoint).await.unwrap_err();
    assert!(
        matches!(err, ProtocolError::WrongPassword { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("rejected the password"), "{err}");
    assert!(!err.to_string().contains(redis.password()));

    endpoint.password = None;
    let err = protocol::connect(&endpoint).await.unwrap_err();
    assert!(
        matches!(err, ProtocolError::PasswordRequired { .. }),
        "{err:?}"
    );

    // Something that is not Redis on the port.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(8) {
            use std::io::Write;
            let _ = stream.and_then(|mut s| s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n"));
        }
    });
    let err = protocol::connect(&protocol::Endpoint {
        host: "127.0.0.1".into(),
        port,
        password: Some("x".into()),
    })
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            ProtocolError::NotRedis { .. } | ProtocolError::Unreachable { .. }
        ),
        "{err:?}"
    );

    // Nothing on the port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = protocol::connect(&protocol::Endpoint {
        host: "127.0.0.1".into(),
        port: closed,
        password: None,
    })
    .await
    .unwrap_err();
    assert!(matches!(err, ProtocolError::Unreachable { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{closed}")),
        "{err}"
    );

    // A Redis that holds something else than pyABC's data.
    let mut conn = connect(&redis).await;
    let _: () = conn.hset("analysis_id", "f", "v").await.unwrap();
    let err = Snapshot::read(&mut conn).await.unwrap_err();
    assert!(matches!(err, ProtocolError::NotPyabc(_)), "{err:?}");
    assert!(
        err.to_string().contains("analysis_id") && err.to_string().contains("hash"),
        "{err}"
    );
    let _: () = conn.del("analysis_id").await.unwrap();
    set_all(
        &mut conn,
        &[("analysis_id", "ana"), ("generation_ana", "soon")],
    )
    .await;
    let err = Snapshot::read(&mut conn).await.unwrap_err().to_string();
    assert!(
        err.contains("generation_ana") && err.contains("soon"),
        "{err}"
    );
    set_all(
        &mut conn,
        &[("generation_ana", "1"), ("n_worker_ana_1", "many")],
    )
    .await;
    let err = Snapshot::read(&mut conn).await.unwrap_err().to_string();
    assert!(
        err.contains("n_worker_ana_1") && err.contains("many"),
        "{err}"
    );
    // Repair tolerates odd ledgers and never panics.
    put_ledger(
        &mut conn,
        "odd",
        &[("analysis", "ana"), ("generation", "x"), ("claim_max", "y")],
    )
    .await;
    let repair = repair_lost_worker(&mut conn, "odd").await.unwrap().unwrap();
    assert!(repair.stale && repair.generation.is_none(), "{repair:?}");
}
