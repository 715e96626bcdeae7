//! The `abc_operator` Python package as a user gets it: `pip install ./python` into a fresh
//! venv, then the package's own tests (`python/tests`: real pyABC runs, a real redis-server)
//! against the installed copy.
//!
//! Offline and quick: the fresh venv sees the pinned requirements of the tests' venv
//! (`$ABC_PYTHON`'s, python/requirements.txt) through a `.pth` file, so pip resolves the
//! package's dependencies against exactly those pins and installs only the package; its build
//! backend comes from the pinned wheels `scripts/deps.sh` downloads (`.python-build`, or
//! `$ABC_PYTHON_BUILD_WHEELS`).

mod support;

use abc_operator::protocol::MASTER_MODULE;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use support::python::python;

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The folder of pinned wheels pip builds the package with (python/requirements-build.txt).
fn build_wheels() -> PathBuf {
    let dir = std::env::var_os("ABC_PYTHON_BUILD_WHEELS")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| crate_dir().join(".python-build"));
    assert!(
        dir.is_dir(),
        "no build wheels at {}: run scripts/deps.sh python (make test does)",
        dir.display()
    );
    dir
}

/// Runs `command` to its end; panics with what it printed unless it succeeded.
fn succeed(command: &mut Command, what: &str) -> Output {
    let out = command
        .output()
        .unwrap_or_else(|err| panic!("{what}: {err}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Copies the package's sources (not its tests) where pip may build it: pip builds in the
/// source folder, which must not be the checkout (other test runs, `git status`).
fn copy_package_sources(to: &Path) {
    let from = crate_dir().join("python");
    let files = [
        "pyproject.toml",
        "README.md",
        "abc_operator/__init__.py",
        "abc_operator/connect.py",
    ];
    for file in files {
        let target = to.join(file);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(from.join(file), &target).unwrap_or_else(|err| panic!("{file}: {err}"));
    }
    let mut package: Vec<_> = std::fs::read_dir(from.join("abc_operator"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name != "__pycache__")
        .collect();
    package.sort();
    assert_eq!(
        package,
        ["__init__.py", "connect.py"],
        "copy every file of the package here (and ship it, if masters need it)"
    );
}

#[test]
fn pip_install_in_a_fresh_venv_gives_the_shipped_module_and_its_tests_pass() {
    let root = tempfile::tempdir().unwrap();
    let sources = root.path().join("python");
    copy_package_sources(&sources);

    let venv = root.path().join("venv");
    succeed(
        Command::new(python()).args(["-m", "venv"]).arg(&venv),
        "python -m venv",
    );
    let fresh = venv.join("bin/python");
    // The pinned requirements, visible to the fresh venv without a copy.
    let pinned = succeed(
        Command::new(python()).args([
            "-c",
            "import sysconfig; p = sysconfig.get_paths(); \
             print('\\n'.join(dict.fromkeys([p['purelib'], p['platlib']])))",
        ]),
        "the pinned venv's site-packages",
    );
    let site = String::from_utf8(
        succeed(
            Command::new(&fresh).args([
                "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            ]),
            "the fresh venv's site-packages",
        )
        .stdout,
    )
    .unwrap();
    std::fs::write(
        Path::new(site.trim()).join("pinned_requirements.pth"),
        pinned.stdout,
    )
    .unwrap();

    succeed(
        Command::new(&fresh)
            .args(["-m", "pip", "install", "--no-index", "--find-links"])
            .arg(build_wheels())
            .arg(sources)
            .env("PIP_DISABLE_PIP_VERSION_CHECK", "1"),
        "pip install ./python",
    );
    succeed(
        Command::new(&fresh).args(["-m", "pip", "check"]),
        "pip check (the package's dependencies against the pins)",
    );

    // The installed module is the one the operator and `abc-operator run` ship, byte for byte.
    let installed = succeed(
        Command::new(&fresh)
            .args(["-c", "import abc_operator; print(abc_operator.__file__)"])
            .current_dir(root.path()),
        "import abc_operator",
    );
    let installed = PathBuf::from(String::from_utf8(installed.stdout).unwrap().trim());
    assert!(
        installed.starts_with(&venv),
        "abc_operator imported from the venv: {}",
        installed.display()
    );
    assert_eq!(std::fs::read_to_string(&installed).unwrap(), MASTER_MODULE);

    let tests = crate_dir().join("python/tests");
    let mpl = root.path().join("matplotlib");
    let out = succeed(
        Command::new(fresh)
            .args(["-m", "unittest", "discover", "-v", "-s"])
            .arg(&tests)
            .arg("-t")
            .arg(tests)
            .current_dir(root.path())
            .env("MPLCONFIGDIR", mpl)
            .env("PYTHONDONTWRITEBYTECODE", "1"),
        "the package's tests (python -m unittest discover python/tests)",
    );
    let report = String::from_utf8_lossy(&out.stderr);
    // (the module's own lines may come between a test's name and its "ok")
    assert!(
        report.contains("test_a_changed_prior_is_refused_and_named")
            && report.lines().any(|line| line == "OK")
            && !report.contains("skipped"),
        "every test of the package ran and passed:\n{report}"
    );
}
