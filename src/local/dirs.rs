//! The folders of a local run: the run folder (results, logs) and the connection file.

use super::error::LocalError;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Where a run writes.
#[derive(Clone, Debug)]
pub struct RunDirs {
    pub run: PathBuf,
    /// `ABC_RESULTS_DIR` of the master.
    pub results: PathBuf,
    pub logs: PathBuf,
}

impl RunDirs {
    /// Creates the folders: `run_dir` or `./abc-runs/<name>-<UTC timestamp>`, its `results`, and
    /// `log_dir` or `<run>/logs`. All paths are absolute, since children run elsewhere.
    pub fn create(
        name: &str,
        run_dir: Option<&Path>,
        log_dir: Option<&Path>,
    ) -> Result<RunDirs, LocalError> {
        let files = |path: &Path| {
            let path = path.to_path_buf();
            move |cause| LocalError::Files { path, cause }
        };
        let run = match run_dir {
            Some(dir) => dir.to_path_buf(),
            None => unique_dir(
                &PathBuf::from("abc-runs"),
                &format!("{name}-{}", timestamp(SystemTime::now())),
            ),
        };
        let run = std::path::absolute(&run).map_err(files(&run))?;
        let results = run.join("results");
        let logs = match log_dir {
            Some(dir) => std::path::absolute(dir).map_err(files(dir))?,
            None => run.join("logs"),
        };
        for dir in [&run, &results, &logs] {
            std::fs::create_dir_all(dir).map_err(files(dir))?;
        }
        Ok(RunDirs { run, results, logs })
    }
}

/// The pyABC databases (`*.db` files) the master left in `results`, by name.
pub fn databases(results: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(results) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "db"))
        .collect();
    found.sort();
    found
}

/// `base/stem`, or `base/stem-2`, ... if it exists (two runs started in the same second).
fn unique_dir(base: &Path, stem: &str) -> PathBuf {
    let mut candidate = base.join(stem);
    let mut n = 2;
    while candidate.exists() {
        candidate = base.join(format!("{stem}-{n}"));
        n += 1;
    }
    candidate
}

/// `YYYYMMDD-HHMMSS` in UTC.
pub fn timestamp(now: SystemTime) -> String {
    let secs = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = ((secs / 86400) as i64, secs % 86400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Writes `NAME=value` lines readable only by the user (it holds the Redis password), for a
/// master started by hand: `set -a; . FILE; set +a`.
pub fn write_env_file(path: &Path, vars: &[(&str, String)]) -> Result<(), LocalError> {
    let files = |cause| LocalError::Files {
        path: path.to_path_buf(),
        cause,
    };
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(files)?;
    for (name, value) in vars {
        writeln!(file, "{name}={}", shell_quote(value)).map_err(files)?;
    }
    Ok(())
}

fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        assert_eq!(timestamp(UNIX_EPOCH), "19700101-000000");
        assert_eq!(
            timestamp(UNIX_EPOCH + Duration::from_secs(951_782_400 + 3661)),
            "20000229-010101"
        );
        assert_eq!(
            timestamp(UNIX_EPOCH + Duration::from_secs(1_767_225_599)),
            "20251231-235959"
        );
    }

    #[test]
    fn run_dirs_are_created_and_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = unique_dir(dir.path(), "g-1");
        std::fs::create_dir_all(&first).unwrap();
        assert_eq!(unique_dir(dir.path(), "g-1"), dir.path().join("g-1-2"));
        let dirs = RunDirs::create("g", Some(&dir.path().join("run")), None).unwrap();
        assert!(dirs.results.is_dir() && dirs.logs.is_dir());
        assert_eq!(dirs.logs, dir.path().join("run/logs"));
    }

    #[test]
    fn databases_are_the_db_files_of_the_results_folder() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b.db", "a.db", "a.db-journal", "notes.txt"] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        std::fs::create_dir(dir.path().join("folder.db")).unwrap();
        assert_eq!(
            databases(dir.path()),
            [dir.path().join("a.db"), dir.path().join("b.db")]
        );
        assert!(databases(&dir.path().join("missing")).is_empty());
    }

    #[test]
    fn env_file_is_private_and_sourceable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("redis.env");
        write_env_file(&path, &[("ABC_REDIS_PASSWORD", "a'b".into())]).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                ". {}; printf %s \"$ABC_REDIS_PASSWORD\"",
                path.display()
            ))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), "a'b");
    }
}
