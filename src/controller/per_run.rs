//! What the controller remembers of each run between reconciles, in memory only: a new
//! controller (a restart, a new leader) starts without it and loses nothing but one read or
//! one early status write.

use crate::api::{AbcRun, SecretKeyRef};
use kube::ResourceExt;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

type RunKey = (String, String);

fn key(run: &AbcRun) -> RunKey {
    (run.namespace().unwrap_or_default(), run.name_any())
}

/// The Redis password of each run whose password lives in the user's own Secret. That Secret
/// is not watched (it carries none of the run's labels, and watching every Secret would cache
/// all of them), so it is read once and kept until the run's Redis refuses it or the run
/// points at another Secret.
#[derive(Default)]
pub struct PasswordCache {
    passwords: Mutex<HashMap<RunKey, (SecretKeyRef, String)>>,
}

impl PasswordCache {
    pub fn get(&self, run: &AbcRun, reference: &SecretKeyRef) -> Option<String> {
        let passwords = self.passwords.lock().unwrap_or_else(|e| e.into_inner());
        match passwords.get(&key(run)) {
            Some((kept_for, password)) if kept_for == reference => Some(password.clone()),
            _ => None,
        }
    }

    pub fn keep(&self, run: &AbcRun, reference: &SecretKeyRef, password: String) {
        let mut passwords = self.passwords.lock().unwrap_or_else(|e| e.into_inner());
        passwords.insert(key(run), (reference.clone(), password));
    }

    pub fn forget(&self, run: &AbcRun) {
        let mut passwords = self.passwords.lock().unwrap_or_else(|e| e.into_inner());
        passwords.remove(&key(run));
    }
}

/// When this controller last wrote each run's status (progress counters are written at a
/// bounded rate, see `status::write_due`).
#[derive(Default)]
pub struct StatusWrites {
    written: Mutex<HashMap<RunKey, Instant>>,
}

impl StatusWrites {
    pub fn since_last(&self, namespace: &str, name: &str) -> Option<Duration> {
        let written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        written
            .get(&(namespace.to_string(), name.to_string()))
            .map(Instant::elapsed)
    }

    pub fn written(&self, namespace: &str, name: &str) {
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        written.insert((namespace.to_string(), name.to_string()), Instant::now());
    }

    pub fn forget(&self, namespace: &str, name: &str) {
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        written.remove(&(namespace.to_string(), name.to_string()));
    }
}

/// How long the same problem of a run is not told again.
const PROBLEM_QUIET: Duration = Duration::from_secs(600);

/// The problems (Degraded reasons) told to each run's user as a Warning, and when. A problem
/// that clears for a moment and comes back (another, shorter problem took the Degraded
/// condition in between, e.g. a Redis read that timed out while the run started) is the same
/// problem: it is told once, not once per flap.
#[derive(Default)]
pub struct ToldProblems {
    told: Mutex<HashMap<(RunKey, String), Instant>>,
}

impl ToldProblems {
    /// Whether `reason` is news for the run (and remembers it as told from now on).
    pub fn tell(&self, namespace: &str, name: &str, reason: &str) -> bool {
        let mut told = self.told.lock().unwrap_or_else(|e| e.into_inner());
        told.retain(|_, at| at.elapsed() < PROBLEM_QUIET);
        let key = (
            (namespace.to_string(), name.to_string()),
            reason.to_string(),
        );
        told.insert(key, Instant::now()).is_none()
    }

    pub fn forget(&self, namespace: &str, name: &str) {
        let mut told = self.told.lock().unwrap_or_else(|e| e.into_inner());
        told.retain(|((ns, n), _), _| !(ns == namespace && n == name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_is_told_once_per_run_however_often_it_comes_back() {
        let told = ToldProblems::default();
        assert!(told.tell("ns", "a", "ErrImageNeverPull"));
        assert!(told.tell("ns", "a", "RedisUnavailable"));
        assert!(!told.tell("ns", "a", "ErrImageNeverPull"));
        assert!(told.tell("ns", "b", "ErrImageNeverPull"));
        told.forget("ns", "a");
        assert!(told.tell("ns", "a", "ErrImageNeverPull"));
    }
}
