//! Checks on narrower builds of the SIMD kernels, each in a child process of its own.
//!
//! The kernels' build is fixed once per process (`FLORA_KERNELS`, read when the kernels are
//! first picked), and narrowing it inside this shared test binary would put every test that
//! runs later in it on a narrower build. So the test binary runs itself again, only the
//! calling test, with `FLORA_KERNELS` set.

use std::process::Command;

use flora::ops::simd::{Kernels, kernels};

/// Set in the child: the build it must run (`avx2` or `portable`).
const CHILD: &str = "FLORA_TEST_KERNELS_CHILD";
/// What the child prints once `check` passed on the expected build.
const PASSED: &str = "kernels check passed on";

/// Runs `check` on the AVX2 build (where this process's kernels are at least that wide, so
/// where the CPU has AVX2) and then on the portable build (which also leaves gemm's SIMD
/// kernels for a plain loop), each in a child process running only `test` (the full name of
/// the calling test, `module::name`) with `FLORA_KERNELS` set; asserts that each child ran
/// the expected build and passed. Inside such a child it just runs `check`, after asserting
/// that the kernels are the build asked for.
pub fn check_narrower_builds(test: &str, check: impl FnOnce()) {
    if let Ok(build) = std::env::var(CHILD) {
        let want = match build.as_str() {
            "avx2" => Kernels::Avx2,
            "portable" => Kernels::Portable,
            other => panic!("{CHILD}={other}: avx2 or portable expected"),
        };
        assert_eq!(kernels(), want, "FLORA_KERNELS={build} in the child");
        check();
        assert_eq!(kernels(), want, "the kernels stayed on {build}");
        println!("{PASSED} {want:?}");
        return;
    }
    let mut builds = Vec::new();
    if kernels() >= Kernels::Avx2 {
        builds.push(("avx2", Kernels::Avx2));
    }
    builds.push(("portable", Kernels::Portable));
    let exe = std::env::current_exe().expect("the test binary's path");
    for (build, want) in builds {
        let out = Command::new(&exe)
            .args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env("FLORA_KERNELS", build)
            .env_remove("FLORA_PORTABLE_KERNELS")
            .env(CHILD, build)
            .output()
            .expect("running the test binary again");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{test} with FLORA_KERNELS={build} failed ({})\nstdout:\n{stdout}\nstderr:\n{stderr}",
            out.status
        );
        assert!(
            stdout.contains(&format!("{PASSED} {want:?}")) && stdout.contains("1 passed"),
            "{test} with FLORA_KERNELS={build} did not run the check on {want:?}\n\
             stdout:\n{stdout}\nstderr:\n{stderr}"
        );
    }
}
