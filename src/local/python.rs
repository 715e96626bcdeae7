//! Which Python runs the workers and the master, and whether it has pyabc.

use super::error::LocalError;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The pyabc version the worker entrypoint and the examples are written against.
pub const EXPECTED_PYABC: &str = "0.13.0";

/// A Python interpreter and where the choice came from (for messages a user can act on).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Python {
    pub path: PathBuf,
    pub source: &'static str,
}

/// A Python that was checked: it exists and has pyabc and redis.
#[derive(Clone, Debug)]
pub struct CheckedPython {
    pub python: Python,
    pub pyabc_version: String,
}

/// Chooses the interpreter: `--python`, then `$ABC_PYTHON`, then a `.venv/bin/python` in the
/// manifest's folder or one of its parents up to the repository root, then `python3`.
pub fn choose(flag: Option<&Path>, env: Option<OsString>, manifest_dir: &Path) -> Python {
    if let Some(path) = flag {
        return Python {
            path: path.to_path_buf(),
            source: "--python",
        };
    }
    if let Some(path) = env.filter(|v| !v.is_empty()) {
        return Python {
            path: PathBuf::from(path),
            source: "$ABC_PYTHON",
        };
    }
    if let Some(path) = find_venv(manifest_dir) {
        return Python {
            path,
            source: "the project's .venv",
        };
    }
    Python {
        path: PathBuf::from("python3"),
        source: "PATH",
    }
}

/// The first `.venv/bin/python` from `dir` upwards, stopping at the repository root (a folder
/// with `.git`) so that an unrelated virtualenv higher up is never picked by accident.
fn find_venv(dir: &Path) -> Option<PathBuf> {
    for ancestor in dir.ancestors() {
        let candidate = ancestor.join(".venv/bin/python");
        if candidate.is_file() {
            return Some(candidate);
        }
        if ancestor.join(".git").exists() {
            break;
        }
    }
    None
}

/// Locates (without importing: `import pyabc` takes several seconds) the modules a worker needs
/// and prints pyabc's version. A broken installation that locates but fails to import shows up
/// as workers failing at start, which the supervisor reports with their log.
const CHECK_SCRIPT: &str = r#"
import importlib.util, importlib.metadata, sys
missing = [m for m in ("pyabc", "redis", "cloudpickle") if importlib.util.find_spec(m) is None]
if missing:
    print(", ".join(missing))
    sys.exit(3)
print(importlib.metadata.version("pyabc"))
"#;

/// Checks that `python` runs and has pyabc, before anything is started.
pub async fn check(python: Python) -> Result<CheckedPython, LocalError> {
    let mut cmd = tokio::process::Command::new(&python.path);
    cmd.arg("-c")
        .arg(CHECK_SCRIPT)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = match tokio::time::timeout(Duration::from_secs(60), cmd.output()).await {
        Err(_) => {
            return Err(LocalError::PythonBroken {
                python: python.path.display().to_string(),
                origin: python.source,
                detail: "it did not answer within 60 s".into(),
            });
        }
        Ok(Err(err)) => {
            return Err(LocalError::PythonNotFound {
                python: python.path.display().to_string(),
                origin: python.source,
                reason: err.to_string(),
            });
        }
        Ok(Ok(output)) => output,
    };
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_string();
    match output.status.code() {
        Some(0) => Ok(CheckedPython {
            python,
            pyabc_version: stdout,
        }),
        Some(3) => Err(LocalError::PythonLacksPyabc {
            python: python.path.display().to_string(),
            origin: python.source,
            missing: stdout,
        }),
        _ => Err(LocalError::PythonBroken {
            python: python.path.display().to_string(),
            origin: python.source,
            detail: last_line(&String::from_utf8_lossy(&output.stderr)),
        }),
    }
}

fn last_line(text: &str) -> String {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no output")
        .trim()
        .to_string()
}

/// Replaces `python`/`python3` as a master command's argv[0] by the chosen interpreter, so the
/// manifest written for a container image runs with the same Python as the local workers.
pub fn master_argv(command: &[String], args: &[String], python: &Path) -> Vec<OsString> {
    let mut argv: Vec<OsString> = command.iter().chain(args).map(OsString::from).collect();
    if let Some(first) = argv.first_mut()
        && (first == "python" || first == "python3")
    {
        *first = python.as_os_str().to_owned();
    }
    argv
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_beats_env_beats_venv_beats_path() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path();
        std::fs::create_dir(repo.join(".git")).unwrap();
        std::fs::create_dir_all(repo.join(".venv/bin")).unwrap();
        std::fs::write(repo.join(".venv/bin/python"), "").unwrap();
        let manifest_dir = repo.join("examples/gaussian");
        std::fs::create_dir_all(&manifest_dir).unwrap();

        let flag = Path::new("/opt/py/bin/python");
        assert_eq!(
            choose(Some(flag), Some("/env/python".into()), &manifest_dir).source,
            "--python"
        );
        let from_env = choose(None, Some("/env/python".into()), &manifest_dir);
        assert_eq!(
            (from_env.path.to_str().unwrap(), from_env.source),
            ("/env/python", "$ABC_PYTHON")
        );
        let venv = choose(None, Some("".into()), &manifest_dir);
        assert_eq!(venv.path, repo.join(".venv/bin/python"));
        std::fs::remove_file(repo.join(".venv/bin/python")).unwrap();
        assert_eq!(
            choose(None, None, &manifest_dir).path,
            PathBuf::from("python3")
        );
    }

    #[test]
    fn venv_search_stops_at_the_repository_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(".venv/bin")).unwrap();
        std::fs::write(dir.path().join(".venv/bin/python"), "").unwrap();
        let repo = dir.path().join("repo");
        std::fs::create_dir_all(repo.join(".git")).unwrap();
        assert_eq!(find_venv(&repo), None);
    }

    #[test]
    fn master_python_is_replaced_other_commands_kept() {
        let py = Path::new("/v/bin/python");
        let argv = master_argv(
            &["python".into(), "gaussian.py".into()],
            &["--fast".into()],
            py,
        );
        assert_eq!(
            argv,
            ["/v/bin/python", "gaussian.py", "--fast"].map(OsString::from)
        );
        let argv = master_argv(&["python3".into(), "x.py".into()], &[], py);
        assert_eq!(argv[0], "/v/bin/python");
        let argv = master_argv(&["./run.sh".into()], &[], py);
        assert_eq!(argv[0], "./run.sh");
    }

    #[tokio::test]
    async fn a_missing_interpreter_is_reported_with_its_source() {
        let python = Python {
            path: "/nonexistent/python".into(),
            source: "--python",
        };
        let err = check(python).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("/nonexistent/python") && text.contains("--python"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn an_interpreter_without_pyabc_is_reported() {
        // `sh -c SCRIPT` exits non-zero on Python syntax: reported as broken, not as missing.
        let python = Python {
            path: "sh".into(),
            source: "PATH",
        };
        assert!(matches!(
            check(python).await,
            Err(LocalError::PythonBroken { .. })
        ));
    }
}
