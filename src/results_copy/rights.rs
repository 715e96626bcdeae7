//! The rights a copy needs in the run's namespace: a namespace user's, nothing cluster-wide.

use super::CopyError;

/// One permission, as a SelfSubjectAccessReview asks for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Right {
    pub verb: &'static str,
    pub group: &'static str,
    pub resource: &'static str,
    /// Empty for none.
    pub subresource: &'static str,
}

const fn right(
    verb: &'static str,
    group: &'static str,
    resource: &'static str,
    subresource: &'static str,
) -> Right {
    Right {
        verb,
        group,
        resource,
        subresource,
    }
}

/// Without these there is no copy: read the run, find the master's node and watch the copy
/// pod (list pods), start and remove the copy pod, exec in it. An exec through a websocket is
/// a GET of `pods/exec`, and Kubernetes 1.35 asks for `create` on it as well.
pub const NEEDED: [Right; 6] = [
    right("get", crate::api::GROUP, "abcruns", ""),
    right("list", "", "pods", ""),
    right("create", "", "pods", ""),
    right("delete", "", "pods", ""),
    right("get", "", "pods", "exec"),
    right("create", "", "pods", "exec"),
];

/// Used when granted, skipped otherwise: reading the claim says early that it is missing or
/// pending; reading Events says why a copy pod does not start (a volume that does not attach).
pub const HELPFUL: [Right; 2] = [
    right("get", "", "persistentvolumeclaims", ""),
    right("list", "", "events", ""),
];

impl std::fmt::Display for Right {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.verb, self.resource)?;
        if !self.subresource.is_empty() {
            write!(f, "/{}", self.subresource)?;
        }
        Ok(())
    }
}

fn join(rights: &[Right]) -> String {
    rights
        .iter()
        .map(Right::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The error naming the rights the user lacks in `namespace`.
pub fn missing_rights(namespace: &str, missing: &[Right]) -> CopyError {
    CopyError::MissingRights {
        namespace: namespace.into(),
        missing: join(missing),
        it: if missing.len() == 1 { "it" } else { "them" },
        needed: match missing.len() < NEEDED.len() {
            true => format!("kubectl abc results needs {} there; ", join(&NEEDED)),
            false => String::new(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_rights_are_named_plainly() {
        let exec = NEEDED[5];
        assert_eq!(exec.to_string(), "create pods/exec");
        assert_eq!(
            missing_rights("science", &[exec]).to_string(),
            "you may not create pods/exec in namespace \"science\": ask an admin of the namespace for it \
             (kubectl abc results needs get abcruns, list pods, create pods, delete pods, get pods/exec, \
             create pods/exec there; the namespace's edit role has them all)"
        );
        assert_eq!(
            missing_rights("s", &NEEDED).to_string(),
            "you may not get abcruns, list pods, create pods, delete pods, get pods/exec, create pods/exec \
             in namespace \"s\": ask an admin of the namespace for them (the namespace's edit role has them all)"
        );
        let two = missing_rights("s", &NEEDED[2..4]).to_string();
        assert!(
            two.starts_with("you may not create pods, delete pods in namespace \"s\": ask an admin of the namespace for them"),
            "{two}"
        );
        assert_eq!(NEEDED[0].group, "abc-operator.dev");
    }
}
