//! Process-wide settings both binaries apply at start-up, before any thread exists.

/// Raises the open-file limit to its hard maximum and caps glibc's malloc arenas.
///
/// - Descriptors: a mover holds directory handles and, while a batch is announced, the
///   batch's open source files (up to a budget derived from this limit). Debian's default soft
///   limit of 1,024 would make that budget small; the hard limit is what an administrator
///   allows, and raising the soft limit to it needs no privilege.
/// - Arenas: glibc gives each thread that allocates its own arena, which keeps its
///   high-water mark. Movers run on a pool of threads, each building a batch's state (a few
///   MiB at most) and freeing it, so default arenas cost several MiB of RSS per thread for
///   nothing. Two per core at most keep allocation uncontended on the cores there are.
pub fn tune() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read and write the struct they are given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    #[cfg(target_env = "gnu")]
    {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        // SAFETY: mallopt only changes a malloc tunable; called before threads allocate.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, (2 * cores).clamp(2, 16) as libc::c_int);
        }
    }
}
