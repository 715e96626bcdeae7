//! `kubectl abc results`: a consistent copy of a run's pyABC database, during or after the run.
//!
//! The master writes its SQLite database under `ABC_RESULTS_DIR`, on the run's results claim
//! ([`crate::resources::results_claim_name`]). The plugin starts a short-lived pod of the run's
//! own image (it has Python) that mounts the claim, on the master's node while the master runs
//! (a ReadWriteOnce volume is attached to one node), and execs `results_copy.py` in it: `list`
//! finds the `*.db` files in the claim's root, `backup` makes a consistent copy into the pod's
//! `/tmp` with SQLite's online backup and reports its size, sha256 and generations, `stream`
//! sends the copy's bytes through the exec's websocket. The plugin checks size and sha256, and
//! deletes the pod (a pod it leaves behind, when it dies itself, ends at its
//! `activeDeadlineSeconds`).
//!
//! The claim is mounted read-write, and the database opened read-only (`mode=ro`): a master
//! killed inside a transaction leaves a hot journal, which SQLite must roll back before the
//! database can be read at all, and neither a read-only connection nor a read-only mount can.
//! The script then opens the database read-write once, which rolls back exactly what the
//! master's next start would; nothing else is ever written to the claim.
//!
//! Everything here is pure: the checks of the run and its claim, the pod, which database, the
//! rights, what the user reads. `src/bin/kubectl_abc/results.rs` talks to the cluster.
//! Files: `pod.rs` the copy pod and how its start is read; `files.rs` which database and what
//! the pod reports of its copy; `rights.rs` the rights the copy needs; `progress.rs` the
//! progress and final lines; `results_copy.py` the pod's side.

mod files;
mod pod;
mod progress;
mod rights;

pub use files::{DbFile, Report, choose_database};
pub use pod::{
    COPY_CONTAINER, COPY_OF_LABEL, PodStart, copy_path, copy_pod, copy_selector, master_node,
    master_selector, pod_start, script_command,
};
pub use progress::{Meter, format_bytes, generations_text, how_to_open, summary_line};
pub use rights::{HELPFUL, NEEDED, Right, missing_rights};

use crate::api::AbcRun;
use crate::resources::results_claim_name;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::ResourceExt;

/// The pod's side: `python -c` of it, with a subcommand (see the file).
pub const SCRIPT: &str = include_str!("results_copy.py");

/// What keeps a copy from being made, in words a user can act on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CopyError {
    #[error(
        "the AbcRun {run:?} has no master (spec.master): its pyABC database is wherever you run the master yourself"
    )]
    NoMaster { run: String },
    #[error(
        "the AbcRun {run:?} keeps its database in the master pod's emptyDir (spec.master.results.volume: EmptyDir): no copy is possible, since it goes with the master's pod, and kubectl abc results copies only from a claim. A run keeps a copyable database on a claim: volume: Claim (the default) or resultsClaimName"
    )]
    EmptyDir { run: String },
    #[error(
        "the claim {claim:?} (spec.master.resultsClaimName) does not exist in namespace {namespace:?}"
    )]
    OwnClaimMissing { claim: String, namespace: String },
    #[error(
        "the run's claim {claim:?} does not exist in namespace {namespace:?}: the operator makes it when it reconciles the run (kubectl describe abc {run} says what it is doing)"
    )]
    ClaimMissing {
        claim: String,
        namespace: String,
        run: String,
    },
    #[error(
        "the claim {claim:?} is Pending: no volume is bound to it yet, so the master has not stored anything on it yet (kubectl describe pvc {claim} says why)"
    )]
    ClaimPending { claim: String },
    #[error(
        "the claim {claim:?} has lost its volume (phase Lost): its data is gone or the volume must be restored first (kubectl describe pvc {claim})"
    )]
    ClaimLost { claim: String },
    #[error(
        "the claim {claim:?} is ReadWriteOncePod: only one pod may mount it, and the master's pod (on node {node}) does now; copy it once the master has ended"
    )]
    ReadWriteOncePod { claim: String, node: String },
    #[error(
        "no database (*.db) on the claim {claim:?} yet: the master has not stored its first generation yet (its script names the file, e.g. abc_operator.run(abc, \"gaussian.db\", ...))"
    )]
    NoDatabase { claim: String },
    #[error("the claim {claim:?} holds several databases: {listing}; name one with --file NAME")]
    SeveralDatabases { claim: String, listing: String },
    #[error("no database {wanted:?} on the claim {claim:?}; it holds: {listing}")]
    NoSuchDatabase {
        claim: String,
        wanted: String,
        listing: String,
    },
    #[error("--file names a database in the claim's root folder, not a path: {wanted:?}")]
    NotAFileName { wanted: String },
    #[error(
        "you may not {missing} in namespace {namespace:?}: ask an admin of the namespace for {it} ({needed}the namespace's edit role has them all)"
    )]
    MissingRights {
        namespace: String,
        missing: String,
        it: &'static str,
        /// The whole list, when only some are missing.
        needed: String,
    },
}

/// The claim the run's database is on, or why there is none to copy from.
pub fn claim_of(run: &AbcRun) -> Result<String, CopyError> {
    if let Some(claim) = results_claim_name(run) {
        return Ok(claim);
    }
    let name = run.name_any();
    Err(match run.spec.master {
        None => CopyError::NoMaster { run: name },
        Some(_) => CopyError::EmptyDir { run: name },
    })
}

/// Whether the claim can hold a database to copy: it exists and is bound to a volume.
pub fn check_claim(
    run: &AbcRun,
    claim: &str,
    found: Option<&PersistentVolumeClaim>,
) -> Result<(), CopyError> {
    let namespace = run.namespace().unwrap_or_default();
    let own = run
        .spec
        .master
        .as_ref()
        .is_some_and(|m| m.results_claim_name.is_some());
    let Some(found) = found else {
        return Err(if own {
            CopyError::OwnClaimMissing {
                claim: claim.into(),
                namespace,
            }
        } else {
            CopyError::ClaimMissing {
                claim: claim.into(),
                namespace,
                run: run.name_any(),
            }
        });
    };
    match found.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Lost") => Err(CopyError::ClaimLost {
            claim: claim.into(),
        }),
        Some("Bound") => Ok(()),
        _ => Err(CopyError::ClaimPending {
            claim: claim.into(),
        }),
    }
}

/// A claim only one pod may mount, mounted by the master's pod now: no copy until it ends.
pub fn check_single_pod_access(
    claim: &str,
    found: &PersistentVolumeClaim,
    master_node: Option<&str>,
) -> Result<(), CopyError> {
    let modes = found
        .spec
        .iter()
        .flat_map(|s| s.access_modes.iter().flatten())
        .chain(
            found
                .status
                .iter()
                .flat_map(|s| s.access_modes.iter().flatten()),
        );
    match master_node {
        Some(node) if modes.into_iter().any(|m| m == "ReadWriteOncePod") => {
            Err(CopyError::ReadWriteOncePod {
                claim: claim.into(),
                node: node.into(),
            })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::test_support::{minimal, run};

    const MASTER: &str = "image: img\nmaster:\n  command: [python, m.py]\n";

    fn claim(phase: &str, modes: &str) -> PersistentVolumeClaim {
        serde_yaml::from_str(&format!(
            "metadata: {{name: c}}\nspec: {{accessModes: [{modes}]}}\nstatus: {{phase: {phase}}}\n"
        ))
        .unwrap()
    }

    #[test]
    fn the_claim_is_the_runs_or_the_users_own_and_none_without_master_or_with_an_empty_dir() {
        assert_eq!(claim_of(&run(MASTER)).unwrap(), "gaussian-results");
        let own = run(&format!("{MASTER}  resultsClaimName: mine\n"));
        assert_eq!(claim_of(&own).unwrap(), "mine");
        let no_master = claim_of(&minimal()).unwrap_err();
        assert_eq!(
            no_master,
            CopyError::NoMaster {
                run: "gaussian".into()
            }
        );
        let empty = claim_of(&run(&format!("{MASTER}  results: {{volume: EmptyDir}}\n")))
            .unwrap_err()
            .to_string();
        assert!(
            empty.contains("EmptyDir") && empty.contains("no copy is possible"),
            "{empty}"
        );
    }

    #[test]
    fn a_missing_pending_or_lost_claim_is_named_with_what_to_do() {
        let made = run(MASTER);
        let missing = check_claim(&made, "gaussian-results", None).unwrap_err();
        assert!(
            missing.to_string().contains("the operator makes it"),
            "{missing}"
        );
        let own = run(&format!("{MASTER}  resultsClaimName: mine\n"));
        let missing = check_claim(&own, "mine", None).unwrap_err().to_string();
        assert!(missing.contains("resultsClaimName"), "{missing}");
        let pending = claim("Pending", "ReadWriteOnce");
        assert_eq!(
            check_claim(&made, "c", Some(&pending)),
            Err(CopyError::ClaimPending { claim: "c".into() })
        );
        let lost = claim("Lost", "ReadWriteOnce");
        assert_eq!(
            check_claim(&made, "c", Some(&lost)),
            Err(CopyError::ClaimLost { claim: "c".into() })
        );
        assert_eq!(
            check_claim(&made, "c", Some(&claim("Bound", "ReadWriteOnce"))),
            Ok(())
        );
    }

    #[test]
    fn a_read_write_once_pod_claim_waits_for_the_master_to_end() {
        let single = claim("Bound", "ReadWriteOncePod");
        assert!(matches!(
            check_single_pod_access("c", &single, Some("node-1")),
            Err(CopyError::ReadWriteOncePod { .. })
        ));
        assert_eq!(check_single_pod_access("c", &single, None), Ok(()));
        let shared = claim("Bound", "ReadWriteOnce");
        assert_eq!(
            check_single_pod_access("c", &shared, Some("node-1")),
            Ok(())
        );
    }
}
