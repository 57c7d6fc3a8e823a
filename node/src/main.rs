//! `carapace`, the node's one binary. PID 1 and every agent are this one
//! file, so the root carries a single copy of tokio, rustls, hyper, zbus and
//! the rest, and the agents share its pages in memory. As busybox does, it
//! runs the program named by the name it is run as: the root has
//! `/usr/lib/carapace/carapace-<name>` as symbolic links to
//! `/usr/lib/carapace/carapace`, and the service manifest runs those. Run
//! as `carapace <name>` it runs that program; as PID 1 it is always
//! carapace-init, whatever its name (stage 1 execs stage 2 with the
//! kernel's `/init` as argv[0]).

use std::ffi::OsStr;
use std::path::Path;
use std::process::ExitCode;

/// A program of the binary: the name it is run as, and its `main`.
type Program = (&'static str, fn() -> ExitCode);

/// The programs, by the names they are run as.
const PROGRAMS: &[Program] = &[
    ("carapace-init", init),
    ("carapace-api", carapace_api::daemon::main),
    ("carapace-bus", carapace_bus::main),
    ("carapace-containers", carapace_containers::daemon::main),
    ("carapace-net", carapace_net::main),
    ("carapace-update", carapace_update::daemon::main),
];

fn init() -> ExitCode {
    carapace_init::main()
}

/// The program that `name` (a path's last component) names: `carapace-x`
/// or `x`; `init` (the initrd's name) is carapace-init.
fn program(name: &OsStr) -> Option<&'static Program> {
    let name = Path::new(name).file_name()?.to_str()?;
    let name = if name == "init" {
        "carapace-init"
    } else {
        name
    };
    PROGRAMS
        .iter()
        .find(|(n, _)| *n == name || n.strip_prefix("carapace-") == Some(name))
}

fn usage() -> ExitCode {
    let names: Vec<&str> = PROGRAMS.iter().map(|(n, _)| *n).collect();
    eprintln!(
        "carapace: run as one of {} (a link named so, or `carapace <name>`)",
        names.join(", ")
    );
    ExitCode::from(2)
}

/// glibc's allocator raises its mmap threshold to the size of the largest
/// block freed (up to 32 MiB), after which blocks that size come from the
/// heap and stay resident once freed: one argon2 check of the API token
/// (19 MiB) would keep 19 MiB in the API for good. A fixed threshold keeps
/// every large block mmapped, so freeing it gives it back to the node.
fn keep_large_allocations_mapped() {
    const THRESHOLD: libc::c_int = 128 * 1024;
    // SAFETY: mallopt only sets a tuning parameter of glibc's allocator and
    // is called here, at the start of main, before this program has
    // started a thread; the arguments are a valid option and value.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD);
    }
}

fn main() -> ExitCode {
    keep_large_allocations_mapped();
    if rustix::process::getpid().is_init() {
        return init();
    }
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    if let Some((_, run)) = program(&argv0) {
        return run();
    }
    match args.next().as_deref().and_then(program) {
        Some((_, run)) => run(),
        None => usage(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(name: &str) -> Option<&'static str> {
        program(OsStr::new(name)).map(|(n, _)| *n)
    }

    #[test]
    fn names_pick_their_program() {
        assert_eq!(
            named("/usr/lib/carapace/carapace-net"),
            Some("carapace-net")
        );
        assert_eq!(named("carapace-bus"), Some("carapace-bus"));
        assert_eq!(named("update"), Some("carapace-update"));
        assert_eq!(named("/init"), Some("carapace-init"));
        assert_eq!(
            named("/usr/lib/carapace/carapace-init"),
            Some("carapace-init")
        );
        assert_eq!(named("containers"), Some("carapace-containers"));
        assert_eq!(named("api"), Some("carapace-api"));
        assert_eq!(named("/usr/lib/carapace/carapace"), None);
        assert_eq!(named("carapace-ctl"), None);
        assert_eq!(named("sh"), None);
    }
}
