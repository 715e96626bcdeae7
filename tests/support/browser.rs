//! A real browser: Debian's Chromium, headless (`scripts/deps.sh chromium`; `make test`
//! installs it). It loads a page as a person's browser would, and gives back the DOM after
//! layout (`--dump-dom`), a screenshot and a PDF print, kept under
//! `<target dir>/test-artifacts/` for a person to look at.
//!
//! Each load is a fresh Chromium with a fresh profile, in its own process group, killed with
//! the group when it runs past its time. The flags keep it from reaching out: no background
//! networking, component updates, sync or QUIC (a closed network refuses those connections,
//! and a test must not depend on them), no proxy (the pages are on loopback).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long one Chromium run may take (a cold start on a loaded 2-core machine takes a few
/// seconds).
pub const TIMEOUT: Duration = Duration::from_secs(90);

/// Chromium: `ABC_CHROMIUM`, or `chromium` on the PATH.
pub fn chromium() -> PathBuf {
    if let Ok(path) = std::env::var("ABC_CHROMIUM") {
        return PathBuf::from(path);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("chromium"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "chromium not found: install it with `scripts/deps.sh chromium` (or set ABC_CHROMIUM)"
        )
    })
}

/// Where tests leave what a person may want to look at: `<target dir>/test-artifacts/`.
pub fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            // the test binary is <target>/<profile>/deps/<name>
            let exe = std::env::current_exe().ok()?;
            Some(exe.parent()?.parent()?.parent()?.to_path_buf())
        })
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("create the test artifacts directory");
    dir
}

/// What Chromium made of a page.
pub struct Rendered {
    /// The DOM after the page loaded (scripts, if any, ran).
    pub dom: String,
    /// A PNG of the window.
    pub screenshot: PathBuf,
}

/// Loads `url` (http://127.0.0.1:PORT/... or file://...) twice: once for its DOM, once for a
/// screenshot of a `width`×`height` window, written as `<artifacts>/<name>.png`.
pub fn render(url: &str, name: &str, width: u32, height: u32) -> Rendered {
    let dir = artifacts_dir();
    let window = format!("--window-size={width},{height}");
    let dom = run(
        name,
        "dom",
        url,
        &["--dump-dom".to_string(), window.clone()],
    );
    let screenshot = dir.join(format!("{name}.png"));
    let _ = std::fs::remove_file(&screenshot);
    run(
        name,
        "screenshot",
        url,
        &[
            format!("--screenshot={}", screenshot.display()),
            window,
            "--hide-scrollbars".into(),
        ],
    );
    assert!(
        screenshot.is_file(),
        "Chromium wrote no screenshot of {url} to {}",
        screenshot.display()
    );
    eprintln!("screenshot of {url}: {}", screenshot.display());
    Rendered { dom, screenshot }
}

/// Prints `url` to `<artifacts>/<name>.pdf` as a person's "Save as PDF" would (print media).
pub fn print_to_pdf(url: &str, name: &str) -> PathBuf {
    let pdf = artifacts_dir().join(format!("{name}.pdf"));
    let _ = std::fs::remove_file(&pdf);
    run(
        name,
        "pdf",
        url,
        &[
            format!("--print-to-pdf={}", pdf.display()),
            "--no-pdf-header-footer".into(),
        ],
    );
    assert!(pdf.is_file(), "Chromium printed no PDF of {url}");
    eprintln!("PDF of {url}: {}", pdf.display());
    pdf
}

/// One headless Chromium run with `extra` flags; its standard output (what `--dump-dom`
/// prints). Panics with its log on failure or after [`TIMEOUT`].
fn run(name: &str, what: &str, url: &str, extra: &[String]) -> String {
    use std::os::unix::process::CommandExt;
    let profile = tempfile::tempdir().expect("a fresh Chromium profile directory");
    let work = tempfile::tempdir().expect("a directory for Chromium's output");
    let stdout_path = work.path().join("stdout");
    let log_path = artifacts_dir().join(format!("{name}.{what}.chromium.log"));
    let stdout = std::fs::File::create(&stdout_path).unwrap();
    let log = std::fs::File::create(&log_path).unwrap();
    let mut cmd = Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--no-proxy-server",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(extra)
    .arg(url)
    .env("HOME", profile.path())
    .stdin(Stdio::null())
    .stdout(stdout)
    .stderr(log)
    .process_group(0);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|err| panic!("start {}: {err}", chromium().display()));
    let group = nix::unistd::Pid::from_raw(child.id() as i32);
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for Chromium") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
            panic!(
                "Chromium ({what} of {url}) ran past {TIMEOUT:?}; killed. Log: {}",
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // helpers it left behind (zygote, GPU process) go with its group
    let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    let out = std::fs::read_to_string(&stdout_path).unwrap_or_default();
    assert!(
        status.success(),
        "Chromium ({what} of {url}) failed: {status}; log: {}\n{}",
        log_path.display(),
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );
    out
}
