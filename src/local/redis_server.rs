//! Starts and stops a password-protected redis-server on loopback.
//!
//! The password goes into a config file (mode 0600, in a private temporary directory), never
//! on a command line, so no other user sees it in a process list. Protected mode stays on,
//! nothing is persisted (`save ""`, `appendonly no`), and the server only listens on
//! 127.0.0.1. Starting blocks for up to a few seconds (until PING answers); from async code run
//! it in `tokio::task::spawn_blocking`.

use crate::protocol::{Endpoint, server_config};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How to start the server.
#[derive(Clone)]
pub struct RedisServerOptions {
    /// Port on 127.0.0.1; a free one when unset.
    pub port: Option<u16>,
    /// The password; a generated one ([`crate::protocol::generate_password`]) when unset.
    pub password: Option<String>,
    /// The redis-server program (default: `redis-server` from PATH).
    pub program: PathBuf,
    /// How long to wait for the server to answer PING.
    pub startup_timeout: Duration,
    /// Keep the server when the process that started it dies (`--keep-redis`); otherwise the
    /// kernel stops it with its parent, even when the parent is SIGKILLed.
    pub outlive_parent: bool,
    /// Also listen on this Unix socket (mode 0700): local clients spend less CPU on it than
    /// on loopback TCP. Its directory must be private to the user.
    pub unix_socket: Option<PathBuf>,
}

impl Default for RedisServerOptions {
    fn default() -> Self {
        RedisServerOptions {
            port: None,
            password: None,
            program: PathBuf::from("redis-server"),
            startup_timeout: Duration::from_secs(10),
            outlive_parent: false,
            unix_socket: None,
        }
    }
}

impl std::fmt::Debug for RedisServerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisServerOptions")
            .field("port", &self.port)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("program", &self.program)
            .field("startup_timeout", &self.startup_timeout)
            .field("outlive_parent", &self.outlive_parent)
            .field("unix_socket", &self.unix_socket)
            .finish()
    }
}

/// Why redis-server could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RedisServerError {
    #[error("redis-server not found on PATH; install the Debian package redis-server")]
    NotInstalled,
    #[error("could not run {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("could not prepare redis-server's private directory or config file: {0}")]
    Files(std::io::Error),
    #[error("could not find a free port on 127.0.0.1: {0}")]
    NoFreePort(std::io::Error),
    #[error("the Redis password must not contain newlines or NUL characters")]
    BadPassword,
    #[error("port {0} on 127.0.0.1 is already in use; choose another port")]
    PortInUse(u16),
    #[error("redis-server exited at startup ({status}): {log}")]
    Exited { status: ExitStatus, log: String },
    #[error("redis-server did not answer PING within {timeout:?}: {last_error}")]
    NotReady {
        timeout: Duration,
        last_error: String,
    },
    #[error("could not stop redis-server (pid {pid}): {source}")]
    Stop { pid: u32, source: std::io::Error },
}

/// A running redis-server; stopped (and its directory removed) on [`RedisServer::stop`] or drop.
pub struct RedisServer {
    child: Option<Child>,
    dir: Option<tempfile::TempDir>,
    port: u16,
    password: String,
}

impl std::fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisServer")
            .field("pid", &self.child.as_ref().map(Child::id))
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl RedisServer {
    /// Starts redis-server and waits until it answers PING with the password.
    pub fn start(options: RedisServerOptions) -> Result<RedisServer, RedisServerError> {
        let password = match options.password.clone() {
            Some(password) if password.contains(['\n', '\r', '\0']) || password.is_empty() => {
                return Err(RedisServerError::BadPassword);
            }
            Some(password) => password,
            None => crate::protocol::generate_password(),
        };
        // A free port found by binding can be taken by someone else before redis binds it:
        // retry with another one in that case.
        let attempts = if options.port.is_some() { 1 } else { 3 };
        let mut last = None;
        for _ in 0..attempts {
            let port = match options.port {
                Some(port) => port,
                None => free_port()?,
            };
            match Self::start_on(&options, port, &password) {
                Err(RedisServerError::PortInUse(port)) if options.port.is_none() => {
                    last = Some(RedisServerError::PortInUse(port));
                }
                result => return result,
            }
        }
        Err(last.expect("at least one attempt was made"))
    }

    fn start_on(
        options: &RedisServerOptions,
        port: u16,
        password: &str,
    ) -> Result<RedisServer, RedisServerError> {
        let dir = tempfile::Builder::new()
            .prefix("abc-redis-")
            .tempdir()
            .map_err(RedisServerError::Files)?;
        let config_path = dir.path().join("redis.conf");
        let log_path = dir.path().join("redis.log");
        let mut config = format!(
            "bind 127.0.0.1\nport {port}\nprotected-mode yes\nrequirepass {}\nsave \"\"\nappendonly no\ndir {}\nlogfile {}\ndaemonize no\n{}",
            quote(password),
            quote(&dir.path().to_string_lossy()),
            quote(&log_path.to_string_lossy()),
            server_config::config_lines(),
        );
        if let Some(socket) = &options.unix_socket {
            config.push_str(&format!(
                "unixsocket {}\nunixsocketperm 700\n",
                quote(&socket.to_string_lossy())
            ));
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&config_path)
            .and_then(|mut file| file.write_all(config.as_bytes()))
            .map_err(RedisServerError::Files)?;
        let mut command = Command::new(&options.program);
        command
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: a terminal's Ctrl-C goes to the runner, which stops
            // workers first and Redis last, not to redis-server directly.
            .process_group(0);
        if !options.outlive_parent {
            // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
            // The signal is tied to the spawning thread: call `start` from a long-lived one.
            unsafe {
                command.pre_exec(|| {
                    nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)
                });
            }
        }
        let child = command.spawn().map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                RedisServerError::NotInstalled
            } else {
                RedisServerError::Spawn {
                    program: options.program.display().to_string(),
                    source,
                }
            }
        })?;
        let mut server = RedisServer {
            child: Some(child),
            dir: Some(dir),
            port,
            password: password.to_string(),
        };
        server.wait_ready(options.startup_timeout, &log_path)?;
        tracing::debug!(port, "redis-server ready");
        Ok(server)
    }

    fn wait_ready(
        &mut self,
        timeout: Duration,
        log_path: &std::path::Path,
    ) -> Result<(), RedisServerError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                let log = std::fs::read_to_string(log_path).unwrap_or_default();
                if log.contains("Address already in use") {
                    return Err(RedisServerError::PortInUse(self.port));
                }
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                return Err(RedisServerError::Exited {
                    status,
                    log: tail.join(" | "),
                });
            }
            let last_error = match self.ping() {
                Ok(()) => return Ok(()),
                Err(err) => err,
            };
            if Instant::now() >= deadline {
                return Err(RedisServerError::NotReady {
                    timeout,
                    last_error,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The clients the server accepts (`maxclients` of `INFO clients`): lower than
    /// configured when redis-server could not raise its open-files limit (see
    /// [`server_config`]).
    pub fn max_clients(&self) -> Result<Option<u32>, String> {
        let info: String = redis::cmd("INFO")
            .arg("clients")
            .query(&mut self.connection()?)
            .map_err(|err| err.to_string())?;
        Ok(server_config::max_clients_from_info(&info))
    }

    fn ping(&self) -> Result<(), String> {
        redis::cmd("PING")
            .query::<String>(&mut self.connection()?)
            .map(|_| ())
            .map_err(|err| err.to_string())
    }

    fn connection(&self) -> Result<redis::Connection, String> {
        let info = redis::IntoConnectionInfo::into_connection_info(redis::ConnectionAddr::Tcp(
            "127.0.0.1".into(),
            self.port,
        ))
        .map_err(|err| err.to_string())?
        .set_redis_settings(redis::RedisConnectionInfo::default().set_password(&self.password));
        let client = redis::Client::open(info).map_err(|err| err.to_string())?;
        client
            .get_connection_with_timeout(Duration::from_millis(500))
            .map_err(|err| err.to_string())
    }

    /// `redis://:{password}@127.0.0.1:{port}/` (percent-encoded password).
    pub fn url(&self) -> String {
        format!(
            "redis://:{}@127.0.0.1:{}/",
            percent_encode(&self.password),
            self.port
        )
    }

    /// Process id of redis-server while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// How the server ended, once it has; `None` while it runs (or after [`Self::detach`]).
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// Host, port and password, for [`crate::protocol::connect`].
    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            host: "127.0.0.1".into(),
            port: self.port,
            password: Some(self.password.clone()),
        }
    }

    /// Lets the server run on after this handle (and, with `outlive_parent`, this process)
    /// is gone; its directory (holding the 0600 config) stays too.
    pub fn detach(mut self) {
        self.child.take();
        if let Some(dir) = self.dir.take() {
            let _ = dir.keep();
        }
    }

    /// Stops the server (SIGTERM, then SIGKILL after 5 s) and removes its directory.
    /// Stopping twice is fine.
    pub fn stop(&mut self) -> Result<(), RedisServerError> {
        let result = match self.child.take() {
            Some(mut child) => terminate(&mut child, Duration::from_secs(5)),
            None => Ok(()),
        };
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
        result
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Err(err) = self.stop() {
            tracing::warn!(%err, "stopping redis-server");
        }
    }
}

/// SIGTERM, wait up to `grace`, then SIGKILL, and reap.
fn terminate(child: &mut Child, grace: Duration) -> Result<(), RedisServerError> {
    let pid = child.id();
    let stop_err = |source| RedisServerError::Stop { pid, source };
    if child.try_wait().map_err(stop_err)?.is_some() {
        return Ok(());
    }
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if child.try_wait().map_err(stop_err)?.is_some() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().map_err(stop_err)?;
    child.wait().map_err(stop_err)?;
    Ok(())
}

fn free_port() -> Result<u16, RedisServerError> {
    let listener =
        std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(RedisServerError::NoFreePort)?;
    Ok(listener
        .local_addr()
        .map_err(RedisServerError::NoFreePort)?
        .port())
}

/// A redis.conf double-quoted string.
fn quote(value: &str) -> String {
    let mut out = String::from("\"");
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_strings_are_quoted() {
        assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(percent_encode("a b/c"), "a%20b%2Fc");
    }

    #[test]
    fn missing_program_is_a_clear_error() {
        let err = RedisServer::start(RedisServerOptions {
            program: "redis-server-that-does-not-exist".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert!(matches!(err, RedisServerError::NotInstalled));
        assert!(
            err.to_string()
                .contains("install the Debian package redis-server")
        );
    }

    #[test]
    fn bad_password_is_rejected() {
        let err = RedisServer::start(RedisServerOptions {
            password: Some("a\nrename-command".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(matches!(err, RedisServerError::BadPassword));
    }
}
