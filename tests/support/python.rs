//! The pinned Python (pyabc 0.13.0) and pyABC processes that are killed when dropped.

use abc_operator::protocol::{Endpoint, MASTER_MODULE, WORKER_ENTRYPOINT_FILE, worker_files};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// `$ABC_PYTHON`, else `.venv/bin/python` at the crate root.
pub fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("ABC_PYTHON").filter(|p| !p.is_empty()) {
        return PathBuf::from(python);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        venv.exists(),
        "no python with pyabc: set ABC_PYTHON or run `make test`, which creates the venv ({} is missing)",
        venv.display()
    );
    venv
}

/// Runs `python -c script args...` to its end and returns its stdout; panics with its stderr
/// when it fails.
pub fn python_script<S: AsRef<std::ffi::OsStr>>(script: &str, args: &[S]) -> Vec<u8> {
    let mpl = tempfile::tempdir().unwrap();
    let out = Command::new(python())
        .env("MPLCONFIGDIR", mpl.path())
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The shipped worker entrypoint, written to a file like the ConfigMap mount, with its Lua
/// scripts and the shipped `abc_operator` module beside it.
pub fn entrypoint() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        write_shipped(dir, "abc_operator.py", MASTER_MODULE);
        for (name, text) in worker_files() {
            write_shipped(dir, name, text);
        }
        dir.join(WORKER_ENTRYPOINT_FILE)
    })
}

/// Writes and renames: test binaries running at once may replace the file, never half-written.
fn write_shipped(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    let partial = dir.join(format!("{name}.{}", std::process::id()));
    std::fs::write(&partial, text).unwrap_or_else(|err| panic!("write {name}: {err}"));
    std::fs::rename(&partial, &path).unwrap_or_else(|err| panic!("move {name} in place: {err}"));
    path
}

/// A test fixture under tests/fixtures.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A child process (in its own process group) killed with its group when dropped; its output
/// goes to a log file.
pub struct Proc {
    pub name: String,
    child: Child,
    log: PathBuf,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Spawns `cmd` with stdout and stderr into `{dir}/{name}.log`.
    pub fn spawn(name: &str, mut cmd: Command, dir: &Path) -> Proc {
        use std::os::unix::process::CommandExt;
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("create a log file");
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|err| panic!("spawn {name}: {err}"));
        Proc {
            name: name.to_string(),
            child,
            log,
            status: None,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends a signal to the process itself.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal);
    }

    /// The exit status, if it has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
        }
        self.status
    }

    /// Waits up to `timeout` for the exit; panics with the log otherwise.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {timeout:?}; log:\n{}",
                self.name,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The end of its output, for assertion messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.try_status().is_none() {
            let group = nix::unistd::Pid::from_raw(-self.pid());
            let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

fn with_redis(cmd: &mut Command, endpoint: &Endpoint) {
    cmd.env("ABC_REDIS_HOST", &endpoint.host)
        .env("ABC_REDIS_PORT", endpoint.port.to_string())
        .env(
            "ABC_REDIS_PASSWORD",
            endpoint.password.clone().unwrap_or_default(),
        )
        .env("PYTHONUNBUFFERED", "1");
}

/// A worker through the shipped entrypoint, with extra environment.
pub fn worker(endpoint: &Endpoint, id: &str, env: &[(&str, &str)], dir: &Path) -> Proc {
    let mut cmd = Command::new(python());
    cmd.arg(entrypoint()).env("ABC_WORKER_ID", id);
    with_redis(&mut cmd, endpoint);
    for (key, value) in env {
        cmd.env(key, value);
    }
    Proc::spawn(&format!("worker-{id}"), cmd, dir)
}

/// The protocol test master (tests/fixtures/protocol_master.py), results in `dir`, with the
/// shipped `abc_operator` module on its path.
pub fn master(endpoint: &Endpoint, env: &[(&str, &str)], dir: &Path) -> Proc {
    let mut cmd = Command::new(python());
    cmd.arg(fixture("protocol_master.py"))
        .env("ABC_RESULTS_DIR", dir)
        .env("PYTHONPATH", entrypoint().parent().unwrap());
    with_redis(&mut cmd, endpoint);
    for (key, value) in env {
        cmd.env(key, value);
    }
    Proc::spawn("master", cmd, dir)
}

/// The Gaussian example's master (examples/gaussian/gaussian.py: `abc_operator.run`), results
/// in `dir`, with the shipped `abc_operator` module on its path.
pub fn example_master(endpoint: &Endpoint, env: &[(&str, &str)], dir: &Path) -> Proc {
    let mut cmd = Command::new(python());
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/gaussian/gaussian.py"))
        .env("ABC_RESULTS_DIR", dir)
        .env("PYTHONPATH", entrypoint().parent().unwrap());
    with_redis(&mut cmd, endpoint);
    for (key, value) in env {
        cmd.env(key, value);
    }
    Proc::spawn("master", cmd, dir)
}

/// What pyABC's own `abc-redis-manager <command>` prints (password through the environment).
pub fn manager(endpoint: &Endpoint, command: &str) -> String {
    let out = Command::new(python())
        .args([
            "-c",
            "import os, sys\nfrom pyabc.sampler.redis_eps.cli import _manage\n\
             _manage(sys.argv[1], host=os.environ['H'], port=int(os.environ['P']), password=os.environ['W'])",
            command,
        ])
        .env("H", &endpoint.host)
        .env("P", endpoint.port.to_string())
        .env("W", endpoint.password.clone().unwrap_or_default())
        .output()
        .expect("run abc-redis-manager");
    assert!(
        out.status.success(),
        "manager failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .trim_end()
        .to_string()
}
