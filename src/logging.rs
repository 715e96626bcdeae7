//! What both binaries' logs share.

use std::io::IsTerminal;

/// Colour codes only where a person reads them: stderr is a terminal and `NO_COLOR` is unset
/// or empty (no-color.org). A pod's log, a CI log or `... 2> run.log` gets plain text.
pub fn colour_on_stderr() -> bool {
    colour_wanted(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    )
}

fn colour_wanted(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour_wanted(true, None));
        assert!(colour_wanted(true, Some("".as_ref())));
        assert!(!colour_wanted(true, Some("1".as_ref())));
        assert!(!colour_wanted(false, None));
    }
}
