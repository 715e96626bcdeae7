//! Which database to copy, and what the pod reports of its copy.

use super::CopyError;
use super::progress::format_bytes;
use serde::Deserialize;

/// A `*.db` file in the claim's root, as the pod's `list` reports it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct DbFile {
    pub name: String,
    pub size: u64,
}

/// The pod's `backup` report: the copy it made in its `/tmp`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// The database's file name on the claim.
    pub name: String,
    /// Size of the copy, in bytes.
    pub size: u64,
    /// sha256 of the copy, hex.
    pub sha256: String,
    /// Rows of `populations` with `t >= 0` (stored generations); `None` without that table.
    pub generations: Option<u64>,
    /// Rows of `abc_smc` (analyses in the database); `None` without that table.
    pub analyses: Option<u64>,
    /// Times SQLite started the backup again because the master committed meanwhile.
    pub restarts: u64,
    /// A hot journal of a master killed inside a transaction was rolled back first.
    pub rolled_back: bool,
    /// How long the backup took in the pod.
    pub seconds: f64,
}

/// The database to copy: `wanted` (a file name in the claim's root, `.db` may be left out),
/// or the only one there.
pub fn choose_database(
    files: &[DbFile],
    wanted: Option<&str>,
    claim: &str,
) -> Result<DbFile, CopyError> {
    let listing = || {
        files
            .iter()
            .map(|f| format!("{} ({})", f.name, format_bytes(f.size)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match wanted {
        Some(wanted) if wanted.contains('/') || wanted.is_empty() => Err(CopyError::NotAFileName {
            wanted: wanted.into(),
        }),
        Some(wanted) => {
            let with_suffix = format!("{wanted}.db");
            files
                .iter()
                .find(|f| f.name == wanted)
                .or_else(|| files.iter().find(|f| f.name == with_suffix))
                .cloned()
                .ok_or_else(|| match files.is_empty() {
                    true => CopyError::NoDatabase {
                        claim: claim.into(),
                    },
                    false => CopyError::NoSuchDatabase {
                        claim: claim.into(),
                        wanted: wanted.into(),
                        listing: listing(),
                    },
                })
        }
        None => match files {
            [] => Err(CopyError::NoDatabase {
                claim: claim.into(),
            }),
            [only] => Ok(only.clone()),
            _ => Err(CopyError::SeveralDatabases {
                claim: claim.into(),
                listing: listing(),
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(names: &[(&str, u64)]) -> Vec<DbFile> {
        names
            .iter()
            .map(|(name, size)| DbFile {
                name: name.to_string(),
                size: *size,
            })
            .collect()
    }

    #[test]
    fn the_only_database_is_taken_and_several_must_be_named() {
        let one = files(&[("gaussian.db", 4096)]);
        assert_eq!(
            choose_database(&one, None, "c").unwrap().name,
            "gaussian.db"
        );
        let two = files(&[("a.db", 1 << 20), ("b.db", 3000)]);
        let err = choose_database(&two, None, "c").unwrap_err();
        assert_eq!(
            err.to_string(),
            "the claim \"c\" holds several databases: a.db (1.0 MiB), b.db (2.9 KiB); name one with --file NAME"
        );
        assert_eq!(
            choose_database(&two, Some("b.db"), "c").unwrap().name,
            "b.db"
        );
        assert_eq!(choose_database(&two, Some("a"), "c").unwrap().name, "a.db");
    }

    #[test]
    fn no_database_yet_says_the_master_has_stored_nothing_and_a_wrong_name_lists_them() {
        let err = choose_database(&[], None, "gaussian-results").unwrap_err();
        assert!(
            err.to_string()
                .contains("the master has not stored its first generation yet"),
            "{err}"
        );
        assert!(matches!(
            choose_database(&[], Some("x.db"), "c"),
            Err(CopyError::NoDatabase { .. })
        ));
        let one = files(&[("gaussian.db", 10)]);
        let err = choose_database(&one, Some("other.db"), "c").unwrap_err();
        assert!(err.to_string().contains("gaussian.db (10 B)"), "{err}");
        assert!(matches!(
            choose_database(&one, Some("../gaussian.db"), "c"),
            Err(CopyError::NotAFileName { .. })
        ));
    }

    #[test]
    fn the_report_reads_what_the_script_prints() {
        let report: Report = serde_json::from_str(
            r#"{"name": "g.db", "size": 262144, "sha256": "ab", "generations": 5, "analyses": 1, "restarts": 0, "rolledBack": false, "seconds": 0.025}"#,
        )
        .unwrap();
        assert_eq!(report.generations, Some(5));
        let bare: Report = serde_json::from_str(
            r#"{"name": "t.db", "size": 1, "sha256": "ab", "generations": null, "analyses": null, "restarts": 2, "rolledBack": true, "seconds": 1}"#,
        )
        .unwrap();
        assert_eq!((bare.generations, bare.rolled_back), (None, true));
    }
}
