//! The binary's allocator: mimalloc, set to give freed memory back to the system at once.
//!
//! The controller holds a thousand runs' state for long and, serving pages, allocates and
//! frees much short-lived data. At bench S's full size (bench/LOG.md, 2026-12-07) mimalloc took
//! the controller's CPU from 3.8 to 2.6% of a core without pages and from 5.7 to 4.1% with 100
//! pages/s, against glibc's allocator with two arenas and a `malloc_trim` every minute, for
//! the same RSS (60 and 63 MiB against 59 and 61). glibc's malloc and free had been a fifth of
//! the controller's CPU while it served pages. The shipped image is static musl, whose own
//! allocator is slower than glibc's.
//!
//! mimalloc's default keeps freed memory for a second, and gives it back only when a thread
//! allocates again: 10 to 20 MiB more RSS at bench S's quick size (48 and 40 MiB against 34
//! and 27). [`configure`] has it give memory back at once instead.

use libmimalloc_sys::{mi_option_set_default, mi_option_t};

/// `mi_option_purge_delay` in mimalloc v3's `mi_option_t` (include/mimalloc.h): how many
/// milliseconds freed memory is kept before it is given back. libmimalloc-sys names only the
/// options it deems stable, so the number is written here, and a unit test checks it against
/// the default the library reports.
const PURGE_DELAY: mi_option_t = 15;

/// Has mimalloc give freed memory back at once; a `MIMALLOC_PURGE_DELAY` in the environment
/// still wins. To be called first in `main`.
pub fn configure() {
    // SAFETY: this only sets a value in mimalloc's table of options, read when it purges.
    unsafe { mi_option_set_default(PURGE_DELAY, 0) }
}

/// Turns transparent huge pages off for this process, and for the processes it starts, so
/// only for the controller, which starts none. mimalloc asks for huge pages on the arena it
/// reserves (1 GiB, before `main`, so its options cannot change that), and the controller's
/// memory, a thousand runs' small objects spread over it, then grows in 2 MiB pages: RSS 81
/// and 99 MiB instead of 60 and 63 at bench S's full size, on a host whose THP mode is
/// `madvise` (with `always`, every allocator's memory would).
pub fn no_huge_pages() {
    // It fails only on kernels older than 3.15, where the RSS is then larger, nothing else.
    let _ = nix::sys::prctl::set_thp_disable(true);
}

#[cfg(test)]
mod tests {
    use super::*;

    // A libmimalloc-sys that moved the option in its enum fails here, instead of the binary
    // setting another option without a word.
    #[test]
    fn the_option_number_is_mimalloc_v3s_purge_delay() {
        // SAFETY: mi_option_get only reads mimalloc's table of options.
        let purge_delay = unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) };
        assert_eq!(
            purge_delay, 1000,
            "mimalloc v3's default purge_delay, 1000 ms (unless MIMALLOC_PURGE_DELAY is set)"
        );
    }
}
