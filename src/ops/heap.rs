//! Keeps the memory a train step frees for the next step. glibc serves allocations over its
//! mmap threshold (128 KiB at start) with fresh pages and trims the heap's free top, so every
//! step's conv outputs, gradients and scratch (tens of MB) were faulted in and zeroed by the
//! kernel again: 7–9% of a fused cnn step. With the thresholds raised the process keeps what
//! it has used; with one arena for all threads, memory one thread frees is reused by the
//! others, which keeps the peak where it was (several arenas grew it by up to 30%).

/// The largest mmap threshold glibc accepts on 64-bit targets (32 MiB): smaller allocations
/// come from the heap and are reused.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 32 << 20;

/// Free memory at the top of the heap that glibc keeps rather than returns (1 GiB).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: libc::c_int = 1 << 30;

/// Tells the allocator to keep freed memory for reuse, in one arena (glibc on Linux; elsewhere
/// nothing to do). Call once before training, before its threads allocate.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes tuning parameters of the allocator; it is safe to call at
    // any time, from any thread.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}
