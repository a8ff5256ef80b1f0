//! The process's memory pages.
//!
//! mimalloc (the binary's allocator) asks the kernel for transparent huge
//! pages on its arenas, and gives back memory it has not used for a second
//! (`MADV_DONTNEED`). In notify's steady state each post's buffers are
//! freed and allocated again, so the two together had the kernel zero a
//! whole 2 MiB page each time a returned range was touched again:
//! `clear_page_erms` took 2.8% of the machine's samples in the notify
//! bench, and notify ~10% more CPU per post than with 4 KiB pages
//! (`docs/PERFORMANCE.md`, eighteenth round). The same setting from outside
//! is `MIMALLOC_ALLOW_THP=0`.

/// Stops the kernel from backing this process's memory with transparent
/// huge pages (`PR_SET_THP_DISABLE`: it applies to every mapping, those
/// made before it included, at their next page fault). Whether it took:
/// a kernel without the call leaves the pages as the system has them.
pub fn disable_transparent_huge_pages() -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: `prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0)` takes integers
        // only and reads or writes no memory of the caller's.
        unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0 }
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn huge_pages_are_off_for_the_process_afterwards() {
        assert!(super::disable_transparent_huge_pages());
        // SAFETY: as above; `PR_GET_THP_DISABLE` only returns the flag.
        let flag = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        assert_eq!(flag, 1);
    }
}
