//! Spawning and stopping the runner's child processes.
//!
//! Every child gets its own process group, so the terminal's Ctrl-C reaches only the runner
//! (which then stops the children in order) and a signal to the group also reaches what the
//! child forked (e.g. a worker's `--processes` subprocesses). Every child also gets
//! `PR_SET_PDEATHSIG = SIGKILL`, so nothing outlives a runner that is itself killed.

use super::error::LocalError;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// What to run.
#[derive(Clone, Debug)]
pub struct Spec {
    /// For messages: "worker local-2", "the master".
    pub what: String,
    pub argv: Vec<OsString>,
    pub cwd: PathBuf,
    /// Added to the runner's environment.
    pub env: Vec<(OsString, OsString)>,
}

/// Where a child's output goes.
pub enum Output {
    /// Appended (stdout and stderr) to this file.
    Log(PathBuf),
    /// stdout piped to the runner (which shows it), stderr appended to the file.
    PipeStdout(PathBuf),
}

/// Opens a log for appending, writing a header first so the incarnations of one worker slot can
/// be told apart in its file.
pub fn open_log(path: &Path, header: &str) -> Result<File, LocalError> {
    let files = |cause| LocalError::Files {
        path: path.to_path_buf(),
        cause,
    };
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(files)?;
    writeln!(file, "==== {header} ====").map_err(files)?;
    Ok(file)
}

/// Spawns a child in its own process group, tied to the runner's life.
pub fn spawn(
    spec: &Spec,
    output: Output,
    header: &str,
) -> Result<tokio::process::Child, LocalError> {
    let spawn_error = |cause| LocalError::Spawn {
        what: spec.what.clone(),
        program: spec
            .argv
            .first()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default(),
        cause,
    };
    let (program, args) = spec.argv.split_first().ok_or_else(|| {
        spawn_error(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "empty command",
        ))
    })?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .current_dir(&spec.cwd)
        .envs(spec.env.iter().cloned())
        .stdin(Stdio::null());
    match output {
        Output::Log(path) => {
            let log = open_log(&path, header)?;
            let err = log.try_clone().map_err(|cause| LocalError::Files {
                path: path.clone(),
                cause,
            })?;
            cmd.stdout(log).stderr(err);
        }
        Output::PipeStdout(path) => {
            let log = open_log(&path, header)?;
            cmd.stdout(Stdio::piped()).stderr(log);
        }
    }
    // A group of its own: the terminal's SIGINT goes to the foreground group, i.e. the runner
    // only; the runner decides the order in which children stop.
    cmd.process_group(0);
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs between fork and exec and calls only async-signal-safe
    // functions (prctl, getppid, kill).
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
            // The runner may have died between fork and prctl: then nobody would kill us.
            if nix::unistd::getppid() != parent {
                let _ = nix::sys::signal::kill(nix::unistd::getpid(), Signal::SIGKILL);
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(spawn_error)
}

/// Sends `signal` to the child's process group. A group that is already gone is fine.
pub fn signal_group(pid: u32, signal: Signal) {
    let Ok(raw) = i32::try_from(pid) else { return };
    if raw <= 0 {
        return;
    }
    match killpg(Pid::from_raw(raw), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(err) => tracing::warn!(pid, %signal, %err, "could not signal process group"),
    }
}

/// The last `n` lines of a log file, for error messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..]
        .iter()
        .map(|l| format!("  | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn child_runs_in_its_own_group_and_logs_to_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("child.log");
        let spec = Spec {
            what: "test child".into(),
            argv: vec![
                "sh".into(),
                "-c".into(),
                "echo out; echo err >&2; echo $X".into(),
            ],
            cwd: dir.path().to_path_buf(),
            env: vec![("X".into(), "from-env".into())],
        };
        let mut child = spawn(&spec, Output::Log(log.clone()), "child r1").unwrap();
        let pid = child.id().unwrap();
        assert_eq!(
            nix::unistd::getpgid(Some(Pid::from_raw(pid as i32))).ok(),
            Some(Pid::from_raw(pid as i32))
        );
        assert!(child.wait().await.unwrap().success());
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.starts_with("==== child r1 ===="), "{text}");
        for expected in ["out", "err", "from-env"] {
            assert!(text.contains(expected), "{text}");
        }
        assert!(tail(&log, 1).contains("from-env"));
    }

    #[tokio::test]
    async fn group_signal_reaches_the_child() {
        let dir = tempfile::tempdir().unwrap();
        let spec = Spec {
            what: "sleeper".into(),
            argv: vec!["sleep".into(), "30".into()],
            cwd: dir.path().to_path_buf(),
            env: vec![],
        };
        let mut child = spawn(&spec, Output::Log(dir.path().join("s.log")), "s").unwrap();
        signal_group(child.id().unwrap(), Signal::SIGTERM);
        let status = tokio::time::timeout(std::time::Duration::from_secs(5), child.wait())
            .await
            .unwrap()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(15));
    }

    #[test]
    fn a_missing_program_names_what_failed() {
        let dir = tempfile::tempdir().unwrap();
        let spec = Spec {
            what: "the master".into(),
            argv: vec!["/nonexistent/prog".into()],
            cwd: dir.path().to_path_buf(),
            env: vec![],
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let err = spawn(&spec, Output::Log(dir.path().join("m.log")), "m").unwrap_err();
        assert!(
            err.to_string().contains("the master") && err.to_string().contains("/nonexistent/prog")
        );
    }
}
