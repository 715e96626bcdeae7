//! The binary's allocator: mimalloc, set to give freed memory back to the system at once.
//!
//! The controller holds a thousand runs' state for long and, serving pages, allocates and
//! frees much short-lived data. At bench S's full size (bench/LOG.md, 2026-12-07) mimalloc took
//! the controller's CPU from 3.8 to 2.3% of a core without pages and from 5.7 to 3.7% with 100
//! pages/s, against glibc's allocator with two arenas and a `malloc_trim` every minute, for
//! 2 or 3 MiB more RSS (61 and 64 MiB against 59 and 61). glibc's malloc and free had been a
//! fifth of the controller's CPU while it served pages. The shipped image is static musl,
//! whose own allocator is slower than glibc's.
//!
//! mimalloc's default keeps freed memory for a second, and gives it back only when a thread
//! allocates again: 10 to 20 MiB more RSS at bench S's quick size (48 and 40 MiB against 34
//! and 27). [`configure`] has it give memory back at once.

use libmimalloc_sys::{mi_option_set_default, mi_option_t};

/// `mi_option_purge_delay` in mimalloc v3's `mi_option_t` (include/mimalloc.h): how many
/// milliseconds freed memory is kept before it is given back. libmimalloc-sys names only the
/// options it deems stable, so the numbers are written here, and a unit test checks them
/// against the defaults the library reports.
const PURGE_DELAY: mi_option_t = 15;
/// `mi_option_arena_eager_commit`: whether an arena's memory is committed when it is reserved
/// (by default, where the system overcommits, as Linux does) or as it is used.
const ARENA_EAGER_COMMIT: mi_option_t = 4;

/// Sets mimalloc's options: freed memory given back at once, and arenas committed as they are
/// used. A committed arena is one mimalloc also asks transparent huge pages for, and the
/// controller's memory, a thousand runs' small objects spread over it, then grew in 2 MiB pages:
/// RSS 81 and 99 MiB instead of 62 and 65 at bench S's full size.
///
/// To be called before mimalloc reserves its first arena, on the first allocation, which Rust's
/// runtime makes before `main` (the main thread's name): the binary calls it from its ELF
/// initialisers, which run earlier (`main.rs`). `MIMALLOC_PURGE_DELAY` and
/// `MIMALLOC_ARENA_EAGER_COMMIT` in the environment still win.
pub extern "C" fn configure() {
    // SAFETY: these only set values in mimalloc's table of options.
    unsafe {
        mi_option_set_default(PURGE_DELAY, 0);
        mi_option_set_default(ARENA_EAGER_COMMIT, 0);
    }
}

/// Turns transparent huge pages off for this process and the processes it starts, so only for
/// the controller, which starts none: on a host whose THP mode is `always`, the kernel would
/// back the arena with 2 MiB pages by itself (as it did above when asked to).
#[cfg(target_os = "linux")]
pub fn no_huge_pages() {
    // It fails only on kernels older than 3.15, where the RSS is then larger, nothing else.
    let _ = nix::sys::prctl::set_thp_disable(true);
}

#[cfg(test)]
mod tests {
    use super::*;

    // A libmimalloc-sys that moved the options in its enum fails here, instead of the binary
    // setting two others without a word. (This test binary does not call `configure`.)
    #[test]
    fn the_option_numbers_are_mimalloc_v3s_purge_delay_and_arena_eager_commit() {
        // SAFETY: mi_option_get only reads mimalloc's table of options.
        let defaults = unsafe {
            (
                libmimalloc_sys::mi_option_get(PURGE_DELAY),
                libmimalloc_sys::mi_option_get(ARENA_EAGER_COMMIT),
            )
        };
        assert_eq!(
            defaults,
            (1000, 2),
            "mimalloc v3's defaults: purge_delay 1000 ms, arena_eager_commit 2 (unless \
             MIMALLOC_PURGE_DELAY or MIMALLOC_ARENA_EAGER_COMMIT is set)"
        );
    }
}
