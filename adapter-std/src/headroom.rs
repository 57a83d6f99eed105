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
/// what is made from it (statistics, a comparison). Unbounded where nothing can be read.
pub(crate) fn for_one_step() -> usize {
    available().map_or(usize::MAX, |bytes| {
        usize::try_from(bytes / 2).unwrap_or(usize::MAX)
    })
}

/// The message refusing a step that would pass [`for_one_step`]'s `limit`: `doing` is what it
/// would have done ("loading this snapshot").
pub(crate) fn refusal(doing: &str, limit: u64) -> String {
    format!(
        "{doing} would take more than {} MiB of memory, half of what this process can still \
         get (a damaged or forged file, or too little memory here)",
        limit.div_ceil(1 << 20)
    )
}

/// Bytes this process can still allocate and use: the least of the memory the system has
/// available (`MemAvailable`, which counts reclaimable caches and no swap), what the process's
/// cgroup and each cgroup above it allow beyond their use, and what its address-space and data
/// limits leave. `None` where none of these can be read (other systems).
pub(crate) fn available() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
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

/// The value in bytes of a `Name:   1234 kB` line of a `/proc` file.
#[cfg(target_os = "linux")]
fn kib_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find_map(|l| l.strip_prefix(name))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kib.checked_mul(1024)
}

/// What the process's cgroup (v2) and every cgroup above it allow beyond their use: the least
/// of `memory.max - memory.current` along the path. `None` without cgroup v2 or any limit.
#[cfg(target_os = "linux")]
fn cgroup_headroom() -> Option<u64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cgroups.lines().find_map(|l| l.strip_prefix("0::"))?;
    let mut dir = std::path::Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'));
    let read = |dir: &std::path::Path, file| {
        let text = std::fs::read_to_string(dir.join(file)).ok()?;
        text.trim().parse::<u64>().ok() // "max" reads as no limit
    };
    let mut least: Option<u64> = None;
    loop {
        if let (Some(max), Some(current)) = (read(&dir, "memory.max"), read(&dir, "memory.current"))
        {
            let left = max.saturating_sub(current);
            least = Some(least.map_or(left, |l| l.min(left)));
        }
        if !dir.pop() || !dir.starts_with("/sys/fs/cgroup") {
            return least;
        }
    }
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
    fn this_machine_has_some_memory_available() {
        let bytes = available().expect("/proc/meminfo is readable on Linux");
        assert!(bytes > 0);
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
        let total = kib_field(&meminfo, "MemTotal:").unwrap();
        assert!(bytes <= total, "{bytes} B available of {total} B");
    }
}
