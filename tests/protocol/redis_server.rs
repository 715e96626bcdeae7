//! The throwaway redis-server of the local runner and the tests.

use crate::support::redis::{connect, server};
use redis::AsyncCommands;
use std::path::PathBuf;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_server_keeps_its_password_off_command_lines_and_cleans_up() {
    let mut redis = server();
    let pid = redis.pid().expect("running");
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    for file in ["cmdline", "environ"] {
        let bytes = std::fs::read(proc_dir.join(file)).unwrap();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(redis.password()),
            "password in {file}"
        );
    }
    // redis-server runs in its private directory: the config there is readable by us only.
    let dir = std::fs::read_link(proc_dir.join("cwd")).unwrap();
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.join("redis.conf"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let config = std::fs::read_to_string(dir.join("redis.conf")).unwrap();
    assert!(config.contains("bind 127.0.0.1") && !config.contains("protected-mode no"));
    assert_eq!(redis.password().len(), 32);
    assert!(
        redis
            .url()
            .ends_with(&format!("@127.0.0.1:{}/", redis.port()))
    );
    let mut conn = connect(&redis).await;
    let _: () = conn.set("k", "v").await.unwrap();

    redis.stop().unwrap();
    assert!(
        !proc_dir.exists()
            || std::fs::read_to_string(proc_dir.join("stat"))
                .unwrap()
                .contains(") Z")
    );
    assert!(!dir.exists(), "its directory is removed");
    redis.stop().unwrap();

    // A port in use is a clear error.
    let taken = server();
    let err = abc_operator::local::redis_server::RedisServer::start(
        abc_operator::local::redis_server::RedisServerOptions {
            port: Some(taken.port()),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(
        err.to_string().contains(&format!(
            "port {} on 127.0.0.1 is already in use",
            taken.port()
        )),
        "{err}"
    );
}

/// Configured for 10,000 worker processes: as many clients as its open-files limit allows
/// (redis-server raises its soft limit up to the hard one by itself), a large accept
/// backlog, and no idle timeout (idle workers wait on silent connections between
/// generations).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_server_is_configured_for_ten_thousand_workers() {
    use abc_operator::protocol::server_config;
    let redis = server();
    let mut conn = connect(&redis).await;
    let config = |name: &'static str| {
        let mut conn = conn.clone();
        async move {
            let reply: (String, String) = redis::cmd("CONFIG")
                .arg("GET")
                .arg(name)
                .query_async(&mut conn)
                .await
                .unwrap();
            reply.1
        }
    };
    assert_eq!(config("timeout").await, "0");
    assert_eq!(
        config("tcp-backlog").await,
        server_config::TCP_BACKLOG.to_string()
    );
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", redis.pid().unwrap())).unwrap();
    let open_files: u32 = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(3))
        .and_then(|soft| soft.parse().ok())
        .expect("redis-server's open-files limit");
    let expected = server_config::max_clients().min(open_files - 32);
    assert_eq!(config("maxclients").await, expected.to_string());
    let info: String = redis::cmd("INFO")
        .arg("clients")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(server_config::max_clients_from_info(&info), Some(expected));
    assert_eq!(redis.max_clients().unwrap(), Some(expected));
    assert_eq!(
        server_config::client_capacity_warning(expected).is_some(),
        open_files < server_config::file_limit()
    );
}
