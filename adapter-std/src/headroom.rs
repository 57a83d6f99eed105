//! How much more memory this process can take: what bounds the loading of a snapshot file,
//! which describes up to about a hundred times its size in memory. Past the bound, a forged
//! or damaged file would end the program with an allocation failure, or wake the kernel's OOM
//! killer, which may pick another process (the service the snapshot came from).

/// A process resource limit this module reads.
#[derive(Clone, Copy)]
pub(crate) enum Resource {
    /// `RLIMIT_AS`: the address space, which reservations count against too.
    AddressSpace,
    /// `RLIMIT_DATA`: the heap and private mappings.
    #[cfg(target_os = "linux")] // read where `available` knows the use it limits
    Data,
}

/// The soft limit on `resource`: `Ok(None)` when unlimited, `Err(())` when it cannot be read.
#[cfg(unix)]
pub(crate) fn soft_limit(resource: Resource) -> Result<Option<u64>, ()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let which = match resource {
        Resource::AddressSpace => libc::RLIMIT_AS,
        #[cfg(target_os = "linux")]
        Resource::Data => libc::RLIMIT_DATA,
    };
    // SAFETY: `getrlimit` writes the limit into `limit`, a valid out-parameter.
    if unsafe { libc::getrlimit(which, &mut limit) } != 0 {
        return Err(());
    }
    #[allow(clippy::unnecessary_cast)] // `rlim_t` is 32 bits wide on some systems
    Ok((limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur as u64))
}

#[cfg(not(unix))]
pub(crate) fn soft_limit(_resource: Resource) -> Result<Option<u64>, ()> {
    Ok(None)
}

/// Bytes one step of a command on a snapshot file may take, loading it or naming its
/// addresses: half of what the process can still get ([`available`]), the other half being for
/// what is made from it (statistics, a comparison), and at least 64 MiB. Unbounded where
/// nothing can be read.
pub(crate) fn for_one_step() -> usize {
    // At least `FLOOR`: a cgroup over its limit (lowered below its use) would leave nothing,
    // and refuse every file, however small. At most `isize::MAX`: no allocation can be larger
    // (a 32-bit host's budget would otherwise read as unbounded).
    step_of(available())
}

/// The least [`for_one_step`] gives, whatever is available.
const FLOOR: u64 = 64 << 20;

/// [`for_one_step`] of `available` bytes.
fn step_of(available: Option<u64>) -> usize {
    available.map_or(usize::MAX, |bytes| {
        let step = (bytes / 2).clamp(FLOOR, isize::MAX as u64);
        usize::try_from(step).unwrap_or(usize::MAX)
    })
}

/// The message refusing a step that would pass [`for_one_step`]'s `limit`: `doing` is what it
/// would have done ("loading this snapshot").
pub(crate) fn refusal(doing: &str, limit: u64) -> String {
    let what = if limit == FLOOR {
        "the least a step may take, more than half of what this process can still get"
    } else {
        "half of what this process can still get"
    };
    format!(
        "{doing} would take more than {} of memory, {what} (a damaged or forged file, or too \
         little memory here)",
        tracemalloc_core::format_size(limit as f64, false)
    )
}

/// Bytes this process can still allocate and use: the least of the memory the system has
/// available (`MemAvailable`, which counts reclaimable caches and no swap), what the process's
/// cgroup and each cgroup above it allow beyond their use, and what its address-space and data
/// limits leave. `None` where none of these can be read (other systems).
pub(crate) fn available() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        let status = proc_text("/proc/self/status");
        let left = |resource, used: &str| {
            let limit = soft_limit(resource).ok().flatten()?;
            Some(limit.saturating_sub(kib_field(&status, used).unwrap_or(0)))
        };
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        [
            kib_field(&meminfo, "MemAvailable:"),
            cgroup_headroom(),
            left(Resource::AddressSpace, "VmSize:"),
            left(Resource::Data, "VmData:"),
        ]
        .into_iter()
        .flatten()
        .min()
    }
    #[cfg(not(target_os = "linux"))]
    None
}

/// The text of a `/proc` file, empty if it cannot be read. Lossy: `/proc/self/status` begins
/// with the process's name, which may be in any encoding, and must not cost the lines after it.
#[cfg(target_os = "linux")]
fn proc_text(path: &str) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The value in bytes of a `Name:   1234 kB` line of a `/proc` file.
#[cfg(target_os = "linux")]
fn kib_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find_map(|l| l.strip_prefix(name))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kib.checked_mul(1024)
}

/// What the process's memory cgroups allow beyond their use: the least, along the path from its
/// cgroup up to the root, of the limit less the memory in use that the kernel cannot reclaim
/// (its file pages, `active_file` and `inactive_file`, are reclaimed before the limit is
/// enforced, as `MemAvailable` counts them; counted as used, a container that has read many
/// files would seem full). Cgroup v2 (`0::` line) and v1 (the `memory` controller's line);
/// `None` without either.
#[cfg(target_os = "linux")]
fn cgroup_headroom() -> Option<u64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    cgroup_headroom_in(std::path::Path::new("/sys/fs/cgroup"), &cgroups)
}

/// [`cgroup_headroom`], with the cgroup file systems under `root` and `cgroups` as
/// `/proc/self/cgroup` reads.
#[cfg(target_os = "linux")]
fn cgroup_headroom_in(root: &std::path::Path, cgroups: &str) -> Option<u64> {
    // Each version's limit, usage, and keys of the file pages in `memory.stat` (of the whole
    // subtree: v1's `total_`).
    const V2: [&str; 4] = [
        "memory.max",
        "memory.current",
        "active_file",
        "inactive_file",
    ];
    const V1: [&str; 4] = [
        "memory.limit_in_bytes",
        "memory.usage_in_bytes",
        "total_active_file",
        "total_inactive_file",
    ];
    let number = |dir: &std::path::Path, file: &str| {
        let text = std::fs::read_to_string(dir.join(file)).ok()?;
        text.trim().parse::<u64>().ok() // "max" reads as no limit
    };
    let stat = |dir: &std::path::Path, key: &str| {
        let text = std::fs::read_to_string(dir.join("memory.stat")).ok()?;
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))?;
        line.trim().parse::<u64>().ok()
    };
    let mut least: Option<u64> = None;
    for line in cgroups.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let (mount, [limit, usage, active, inactive]) = if id == "0" && controllers.is_empty() {
            (root.to_path_buf(), V2)
        } else if controllers.split(',').any(|c| c == "memory") {
            (root.join("memory"), V1)
        } else {
            continue;
        };
        let mut dir = mount.join(path.trim_start_matches('/'));
        loop {
            if let (Some(limit), Some(usage)) = (number(&dir, limit), number(&dir, usage)) {
                let cache = [active, inactive].map(|key| stat(&dir, key).unwrap_or(0));
                let used = usage.saturating_sub(cache[0].saturating_add(cache[1]));
                let left = limit.saturating_sub(used);
                least = Some(least.map_or(left, |l| l.min(left)));
            }
            if dir == mount || !dir.pop() || !dir.starts_with(&mount) {
                break;
            }
        }
    }
    least
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn kib_fields_are_read_in_bytes() {
        let text = "MemTotal:       16281256 kB\nMemAvailable:    9000 kB\nVmSize:\t  12 kB\n";
        assert_eq!(kib_field(text, "MemAvailable:"), Some(9000 * 1024));
        assert_eq!(kib_field(text, "VmSize:"), Some(12 * 1024));
        assert_eq!(kib_field(text, "MemFree:"), None);
        assert_eq!(kib_field("MemAvailable: lots kB", "MemAvailable:"), None);
    }

    #[test]
    fn cgroups_leave_their_limit_less_what_cannot_be_reclaimed() {
        let root = std::env::temp_dir().join(format!("tracemalloc-cgroup-{}", std::process::id()));
        let write = |dir: &str, files: &[(&str, &str)]| {
            let dir = root.join(dir);
            std::fs::create_dir_all(&dir).unwrap();
            for (name, text) in files {
                std::fs::write(dir.join(name), text).unwrap();
            }
        };
        // v2: the service's cgroup is limited, with 500 000 of its 900 000 bytes file pages;
        // its parent has no limit, the root no files.
        write(
            "system.slice",
            &[("memory.max", "max\n"), ("memory.current", "5\n")],
        );
        write(
            "system.slice/app.service",
            &[
                ("memory.max", "1000000\n"),
                ("memory.current", "900000\n"),
                (
                    "memory.stat",
                    "anon 400000\nfile 500000\nactive_file 200000\ninactive_file 300000\n",
                ),
            ],
        );
        let v2 = "0::/system.slice/app.service\n";
        assert_eq!(cgroup_headroom_in(&root, v2), Some(600_000));
        // v1: the memory controller's line, with the hierarchy's total; a tighter parent wins.
        write(
            "memory/docker",
            &[
                ("memory.limit_in_bytes", "700000\n"),
                ("memory.usage_in_bytes", "650000\n"),
            ],
        );
        write(
            "memory/docker/abc",
            &[
                ("memory.limit_in_bytes", "9223372036854771712\n"),
                ("memory.usage_in_bytes", "600000\n"),
                (
                    "memory.stat",
                    "inactive_file 1\ntotal_active_file 40000\ntotal_inactive_file 60000\n",
                ),
            ],
        );
        let v1 = "12:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/\n";
        assert_eq!(cgroup_headroom_in(&root, v1), Some(50_000));
        // A limit lowered below the use leaves nothing.
        write(
            "over",
            &[("memory.max", "1000\n"), ("memory.current", "5000\n")],
        );
        assert_eq!(cgroup_headroom_in(&root, "0::/over\n"), Some(0));
        // Without the files, or the lines, nothing is known.
        assert_eq!(cgroup_headroom_in(&root, "0::/elsewhere\n"), None);
        assert_eq!(cgroup_headroom_in(&root, "garbage\n"), None);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_step_takes_half_of_what_is_left_and_at_least_64_mib() {
        assert_eq!(step_of(Some(1 << 30)), 512 << 20);
        assert_eq!(step_of(Some(0)), 64 << 20);
        assert_eq!(step_of(None), usize::MAX);
        assert_eq!(step_of(Some(u64::MAX)), isize::MAX as usize);
    }

    #[test]
    fn a_refusal_at_the_floor_does_not_call_it_half_of_what_is_left() {
        let at_floor = refusal("loading this snapshot", step_of(Some(0)) as u64);
        assert!(
            at_floor.contains("64.0 MiB of memory, the least a step may take"),
            "{at_floor}"
        );
        let half = refusal("loading this snapshot", step_of(Some(1 << 30)) as u64);
        assert!(
            half.contains("512 MiB of memory, half of what this process can"),
            "{half}"
        );
    }

    /// A process named in another encoding than UTF-8 (here Latin-1's "café") still has its
    /// address space counted against `RLIMIT_AS`.
    #[test]
    fn a_process_name_in_another_encoding_leaves_its_sizes_readable() {
        // The main thread's name, which `/proc/self/status` shows, whichever thread writes it.
        let comm = "/proc/self/comm";
        let name = std::fs::read(comm).unwrap();
        std::fs::write(comm, b"caf\xe9").unwrap();
        let status = proc_text("/proc/self/status");
        std::fs::write(comm, name.trim_ascii_end()).unwrap();
        assert!(status.starts_with("Name:\tcaf\u{fffd}"), "{status}");
        assert!(kib_field(&status, "VmSize:").is_some_and(|bytes| bytes > 0));
    }

    #[test]
    fn this_machine_has_some_memory_available() {
        let bytes = available().expect("/proc/meminfo is readable on Linux");
        assert!(bytes > 0);
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
        let total = kib_field(&meminfo, "MemTotal:").unwrap();
        assert!(bytes <= total, "{bytes} B available of {total} B");
    }
}
