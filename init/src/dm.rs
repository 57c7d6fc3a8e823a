//! Device-mapper, spoken directly: the ioctls on /dev/mapper/control that
//! create a read-only device with one target and make it live —
//! DM_DEV_CREATE, DM_TABLE_LOAD, DM_DEV_SUSPEND without the suspend flag
//! (which resumes), and DM_DEV_REMOVE to clean up after a failure.
//!
//! `struct dm_ioctl` (interface version 4) and `struct dm_target_spec` are
//! laid out by hand, following include/uapi/linux/dm-ioctl.h, in
//! [`encode`]: a pure function whose output the unit tests check byte by
//! byte. The only unsafe code is handing that buffer to ioctl(2).

use rustix::fd::{AsFd, OwnedFd};
use rustix::ioctl::{Ioctl, IoctlOutput, Opcode};
use std::ffi::c_void;
use std::fmt;

/// The control device, created by devtmpfs when the kernel has device-mapper.
pub const CONTROL: &str = "/dev/mapper/control";

/// `sizeof(struct dm_ioctl)`: 3 + 7 u32s, a u64, name[128], uuid[129], data[7].
pub const DM_IOCTL_SIZE: usize = 312;
/// `sizeof(struct dm_target_spec)`: 2 u64s, an s32, a u32, target_type[16].
pub const DM_TARGET_SPEC_SIZE: usize = 40;
/// `DM_NAME_LEN`, including the terminating NUL.
pub const DM_NAME_LEN: usize = 128;
/// `DM_MAX_TYPE_NAME`, including the terminating NUL.
pub const DM_MAX_TYPE_NAME: usize = 16;
/// The interface version we speak: 4.0.0 (the kernel accepts any 4.x it
/// knows and answers with its own).
pub const DM_VERSION: [u32; 3] = [4, 0, 0];

/// `DM_READONLY_FLAG`: the table (and so the device) is read-only.
pub const DM_READONLY_FLAG: u32 = 1 << 0;
/// `DM_SUSPEND_FLAG`: with DM_DEV_SUSPEND, suspend; without, resume.
pub const DM_SUSPEND_FLAG: u32 = 1 << 1;

/// Byte offsets of the fields of `struct dm_ioctl`.
mod field {
    pub const VERSION: usize = 0;
    pub const DATA_SIZE: usize = 12;
    pub const DATA_START: usize = 16;
    pub const TARGET_COUNT: usize = 20;
    pub const FLAGS: usize = 28;
    pub const DEV: usize = 40;
    pub const NAME: usize = 48;
}

/// Byte offsets of the fields of `struct dm_target_spec`.
mod spec {
    pub const SECTOR_START: usize = 0;
    pub const LENGTH: usize = 8;
    pub const NEXT: usize = 20;
    pub const TARGET_TYPE: usize = 24;
}

/// The device-mapper commands used here: the `nr` of `_IOWR(0xfd, nr, struct dm_ioctl)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    DevCreate = 3,
    DevRemove = 4,
    DevSuspend = 6,
    TableLoad = 9,
}

impl Command {
    /// The ioctl request number, as the C macros compute it.
    pub fn opcode(self) -> Opcode {
        rustix::ioctl::opcode::read_write::<[u8; DM_IOCTL_SIZE]>(0xfd, self as u8)
    }
}

/// The C name, for messages.
impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Command::DevCreate => "DM_DEV_CREATE",
            Command::DevRemove => "DM_DEV_REMOVE",
            Command::DevSuspend => "DM_DEV_SUSPEND",
            Command::TableLoad => "DM_TABLE_LOAD",
        })
    }
}

/// One target of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target<'a> {
    /// The first sector of the device it maps.
    pub start: u64,
    /// How many 512-byte sectors it maps.
    pub sectors: u64,
    /// The target type, e.g. `verity`.
    pub kind: &'a str,
    /// The target's parameter string.
    pub params: &'a str,
}

#[derive(Debug, thiserror::Error)]
pub enum DmError {
    #[error(
        "device-mapper name {0:?} is empty, longer than 127 bytes, contains '/' or is reserved"
    )]
    Name(String),
    #[error("device-mapper target type {0:?} is empty or longer than 15 bytes")]
    TargetType(String),
    #[error("device-mapper target parameters contain a NUL byte")]
    Params,
    #[error("cannot open {CONTROL}: {0} (is the kernel built with CONFIG_BLK_DEV_DM?)")]
    Control(std::io::Error),
    #[error("{command} for {name:?} failed: {err}{}", hint(.command, .err))]
    Ioctl {
        command: Command,
        name: String,
        err: std::io::Error,
    },
}

/// What the kernel's usual answers mean, where that is not obvious.
fn hint(command: &Command, err: &std::io::Error) -> &'static str {
    use rustix::io::Errno;
    match (command, Errno::from_io_error(err)) {
        (Command::DevCreate, Some(Errno::BUSY)) => " (a device of that name exists already)",
        (Command::TableLoad, Some(Errno::INVAL)) => {
            " (the kernel refused the table; its log says why)"
        }
        (Command::TableLoad, Some(Errno::NOENT)) => " (no such device or target type)",
        _ => "",
    }
}

fn check_name(name: &str) -> Result<(), DmError> {
    if name.is_empty()
        || name.len() >= DM_NAME_LEN
        || name.contains(['/', '\0'])
        || matches!(name, "." | ".." | "control")
    {
        return Err(DmError::Name(name.to_string()));
    }
    Ok(())
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}

/// A whole request for device `name`: `struct dm_ioctl` with `flags`,
/// followed by one `struct dm_target_spec` and its NUL-terminated parameter
/// string per target, each padded to 8 bytes. `data_size` covers it all;
/// `data_start` points just after the header; each spec's `next` is the
/// offset from that spec to the following one.
pub fn encode(name: &str, flags: u32, targets: &[Target<'_>]) -> Result<Vec<u8>, DmError> {
    check_name(name)?;
    let mut specs = Vec::new();
    for t in targets {
        if t.kind.is_empty() || t.kind.len() >= DM_MAX_TYPE_NAME || t.kind.contains('\0') {
            return Err(DmError::TargetType(t.kind.to_string()));
        }
        if t.params.contains('\0') {
            return Err(DmError::Params);
        }
        let len = (DM_TARGET_SPEC_SIZE + t.params.len() + 1).next_multiple_of(8);
        let mut s = vec![0u8; len];
        put_u64(&mut s, spec::SECTOR_START, t.start);
        put_u64(&mut s, spec::LENGTH, t.sectors);
        put_u32(&mut s, spec::NEXT, len as u32);
        s[spec::TARGET_TYPE..spec::TARGET_TYPE + t.kind.len()].copy_from_slice(t.kind.as_bytes());
        s[DM_TARGET_SPEC_SIZE..DM_TARGET_SPEC_SIZE + t.params.len()]
            .copy_from_slice(t.params.as_bytes());
        specs.push(s);
    }
    let total = DM_IOCTL_SIZE + specs.iter().map(Vec::len).sum::<usize>();
    let mut b = vec![0u8; DM_IOCTL_SIZE];
    for (i, v) in DM_VERSION.iter().enumerate() {
        put_u32(&mut b, field::VERSION + 4 * i, *v);
    }
    put_u32(&mut b, field::DATA_SIZE, total as u32);
    put_u32(&mut b, field::DATA_START, DM_IOCTL_SIZE as u32);
    put_u32(&mut b, field::TARGET_COUNT, targets.len() as u32);
    put_u32(&mut b, field::FLAGS, flags);
    b[field::NAME..field::NAME + name.len()].copy_from_slice(name.as_bytes());
    for s in specs {
        b.extend_from_slice(&s);
    }
    Ok(b)
}

/// The `dev` field of a reply (the kernel's huge_encode_dev) as (major, minor).
pub fn decode_dev(reply: &[u8]) -> Option<(u32, u32)> {
    let raw = reply.get(field::DEV..field::DEV + 8)?;
    let mut d = [0u8; 8];
    d.copy_from_slice(raw);
    let dev = u64::from_ne_bytes(d);
    let major = ((dev >> 8) & 0xfff) as u32;
    let minor = ((dev & 0xff) | ((dev >> 12) & 0xfff00)) as u32;
    Some((major, minor))
}

/// A device-mapper device that exists in the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub name: String,
    pub major: u32,
    pub minor: u32,
}

impl Device {
    /// The node devtmpfs creates for it: the kernel names the disk `dm-<minor>`.
    pub fn node(&self) -> String {
        format!("/dev/dm-{}", self.minor)
    }

    /// Its `dev_t`, for mknod.
    pub fn dev(&self) -> rustix::fs::Dev {
        rustix::fs::makedev(self.major, self.minor)
    }
}

/// One ioctl on a request buffer that the kernel reads and writes back.
struct Call<'a> {
    command: Command,
    buf: &'a mut [u64],
}

// SAFETY: every device-mapper ioctl takes a pointer to a `struct dm_ioctl`
// followed by `data_size - sizeof(struct dm_ioctl)` bytes, which the kernel
// copies in and (for the reply) out with copy_from_user/copy_to_user, never
// beyond `data_size`. `buf` is a live, exclusively borrowed, 8-byte aligned
// buffer (the alignment of `struct dm_ioctl`) made by `encode`, whose
// `data_size` equals its length (`call` checks this before every call), and the opcode is the
// `_IOWR` encoding of the command. The output is read from `buf` by the
// caller after the borrow ends, not through `output_from_ptr`.
unsafe impl Ioctl for Call<'_> {
    type Output = ();
    const IS_MUTATING: bool = true;

    fn opcode(&self) -> Opcode {
        self.command.opcode()
    }

    fn as_ptr(&mut self) -> *mut c_void {
        self.buf.as_mut_ptr().cast()
    }

    unsafe fn output_from_ptr(_out: IoctlOutput, _ptr: *mut c_void) -> rustix::io::Result<()> {
        Ok(())
    }
}

/// Sends `request` (from [`encode`]) and returns the kernel's reply.
fn call(
    control: impl AsFd,
    command: Command,
    name: &str,
    request: &[u8],
) -> Result<Vec<u8>, DmError> {
    // Copy into u64s so the buffer has the alignment of struct dm_ioctl.
    let mut words = vec![0u64; request.len().div_ceil(8)];
    for (w, chunk) in words.iter_mut().zip(request.chunks(8)) {
        let mut b = [0u8; 8];
        b[..chunk.len()].copy_from_slice(chunk);
        *w = u64::from_ne_bytes(b);
    }
    let data_size = request
        .get(field::DATA_SIZE..field::DATA_SIZE + 4)
        .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize);
    if request.len() < DM_IOCTL_SIZE || data_size != Some(request.len()) {
        // Not from `encode`: refuse rather than let the kernel read past the buffer.
        return Err(DmError::Ioctl {
            command,
            name: name.to_string(),
            err: std::io::Error::from(rustix::io::Errno::INVAL),
        });
    }
    // SAFETY: see the `Ioctl` impl of `Call`; `words` is at least
    // `data_size` bytes long and lives until after the call returns.
    let result = unsafe {
        rustix::ioctl::ioctl(
            control,
            Call {
                command,
                buf: &mut words,
            },
        )
    };
    result.map_err(|e| DmError::Ioctl {
        command,
        name: name.to_string(),
        err: e.into(),
    })?;
    Ok(words.iter().flat_map(|w| w.to_ne_bytes()).collect())
}

/// Opens the control device.
pub fn open_control() -> Result<OwnedFd, DmError> {
    rustix::fs::open(
        CONTROL,
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| DmError::Control(e.into()))
}

/// Creates the device `name`, loads a read-only table with the one
/// `target`, and resumes it so that it serves reads. On failure after the
/// device exists, it is removed again (best effort) and the first error
/// returned.
pub fn create_read_only(name: &str, target: &Target<'_>) -> Result<Device, DmError> {
    let create = encode(name, 0, &[])?;
    let load = encode(name, DM_READONLY_FLAG, std::slice::from_ref(target))?;
    let resume = encode(name, 0, &[])?;
    let control = open_control()?;
    let reply = call(&control, Command::DevCreate, name, &create)?;
    let activate = || -> Result<(), DmError> {
        call(&control, Command::TableLoad, name, &load)?;
        call(&control, Command::DevSuspend, name, &resume)?;
        Ok(())
    };
    if let Err(e) = activate() {
        let _ = call(&control, Command::DevRemove, name, &resume);
        return Err(e);
    }
    let (major, minor) = decode_dev(&reply).unwrap_or_default();
    Ok(Device {
        name: name.to_string(),
        major,
        minor,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
    }

    fn u64_at(b: &[u8], o: usize) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[o..o + 8]);
        u64::from_ne_bytes(a)
    }

    #[test]
    fn opcodes_are_those_of_the_c_headers() {
        // _IOWR(0xfd, nr, struct dm_ioctl): dir 3 << 30 | 312 << 16 | 0xfd << 8 | nr.
        assert_eq!(Command::DevCreate.opcode(), 0xc138_fd03);
        assert_eq!(Command::DevRemove.opcode(), 0xc138_fd04);
        assert_eq!(Command::DevSuspend.opcode(), 0xc138_fd06);
        assert_eq!(Command::TableLoad.opcode(), 0xc138_fd09);
    }

    #[test]
    fn a_bare_request_is_one_struct_dm_ioctl() {
        let b = encode("root", 0, &[]).expect("valid");
        assert_eq!(b.len(), DM_IOCTL_SIZE);
        assert_eq!([u32_at(&b, 0), u32_at(&b, 4), u32_at(&b, 8)], [4, 0, 0]);
        assert_eq!(u32_at(&b, 12), 312, "data_size");
        assert_eq!(u32_at(&b, 16), 312, "data_start");
        assert_eq!(u32_at(&b, 20), 0, "target_count");
        assert_eq!(u32_at(&b, 24), 0, "open_count");
        assert_eq!(u32_at(&b, 28), 0, "flags");
        assert_eq!(u32_at(&b, 32), 0, "event_nr");
        assert_eq!(u64_at(&b, 40), 0, "dev");
        assert_eq!(&b[48..53], b"root\0", "name[128] at 48");
        assert!(b[53..176].iter().all(|&c| c == 0));
        assert!(b[176..312].iter().all(|&c| c == 0), "uuid[129], data[7]");
    }

    #[test]
    fn a_table_load_carries_one_target_spec_with_its_parameters() {
        let params = "1 /dev/vda2 /dev/vda3 512 512 16384 1 sha256 ab -";
        let target = Target {
            start: 0,
            sectors: 16384,
            kind: "verity",
            params,
        };
        let b = encode("root", DM_READONLY_FLAG, &[target]).expect("valid");
        let spec_len = (40 + params.len() + 1).next_multiple_of(8);
        assert_eq!(b.len(), 312 + spec_len);
        assert_eq!(b.len() % 8, 0);
        assert_eq!(u32_at(&b, 12) as usize, b.len(), "data_size covers all");
        assert_eq!(u32_at(&b, 16), 312, "the spec follows the header");
        assert_eq!(u32_at(&b, 20), 1, "target_count");
        assert_eq!(u32_at(&b, 28), DM_READONLY_FLAG);
        let s = 312;
        assert_eq!(u64_at(&b, s), 0, "sector_start");
        assert_eq!(u64_at(&b, s + 8), 16384, "length");
        assert_eq!(u32_at(&b, s + 16), 0, "status");
        assert_eq!(u32_at(&b, s + 20) as usize, spec_len, "next");
        assert_eq!(&b[s + 24..s + 31], b"verity\0", "target_type[16] at 24");
        assert!(b[s + 31..s + 40].iter().all(|&c| c == 0));
        let p = s + 40;
        assert_eq!(&b[p..p + params.len()], params.as_bytes());
        assert!(
            b[p + params.len()..].iter().all(|&c| c == 0),
            "NUL-terminated, zero padding"
        );
        // The kernel's populate_table() needs room for the spec and the NUL
        // after data_start: data_size - 40 > data_start.
        assert!(b.len() - 40 > 312);
    }

    #[test]
    fn several_targets_are_chained_by_next() {
        let t = |start, params| Target {
            start,
            sectors: 8,
            kind: "zero",
            params,
        };
        let b = encode("two", 0, &[t(0, ""), t(8, "abcdefgh")]).expect("valid");
        let first = 312;
        let next = u32_at(&b, first + 20) as usize;
        assert_eq!(next, 48, "40 + NUL, rounded up to 8");
        let second = first + next;
        assert_eq!(u64_at(&b, second), 8);
        assert_eq!(&b[second + 40..second + 49], b"abcdefgh\0");
        assert_eq!(b.len(), second + 56);
    }

    #[test]
    fn bad_names_and_targets_are_refused() {
        for name in ["", "a/b", ".", "..", "control", "nul\0"] {
            assert!(
                matches!(encode(name, 0, &[]), Err(DmError::Name(_))),
                "{name:?}"
            );
        }
        assert!(encode(&"x".repeat(127), 0, &[]).is_ok());
        assert!(matches!(
            encode(&"x".repeat(128), 0, &[]),
            Err(DmError::Name(_))
        ));
        let t = |kind, params| Target {
            start: 0,
            sectors: 1,
            kind,
            params,
        };
        assert!(matches!(
            encode("root", 0, &[t("a-very-long-target", "")]),
            Err(DmError::TargetType(_))
        ));
        assert!(matches!(
            encode("root", 0, &[t("", "")]),
            Err(DmError::TargetType(_))
        ));
        assert!(matches!(
            encode("root", 0, &[t("verity", "a\0b")]),
            Err(DmError::Params)
        ));
    }

    #[test]
    fn decodes_the_device_number_of_a_reply() {
        let mut b = vec![0u8; 312];
        // major 253, minor 0x123 in huge_encode_dev form.
        let dev: u64 = 0x23 | (253 << 8) | (0x100 << 12);
        b[40..48].copy_from_slice(&dev.to_ne_bytes());
        assert_eq!(decode_dev(&b), Some((253, 0x123)));
        assert_eq!(decode_dev(&b[..20]), None);
        let d = Device {
            name: "root".into(),
            major: 253,
            minor: 0x123,
        };
        assert_eq!(d.node(), "/dev/dm-291");
        assert_eq!(rustix::fs::major(d.dev()), 253);
        assert_eq!(rustix::fs::minor(d.dev()), 0x123);
    }

    #[test]
    fn errors_name_the_command_the_device_and_the_reason() {
        let e = DmError::Ioctl {
            command: Command::TableLoad,
            name: "root".into(),
            err: rustix::io::Errno::INVAL.into(),
        };
        let msg = e.to_string();
        assert!(
            msg.starts_with("DM_TABLE_LOAD for \"root\" failed: "),
            "{msg}"
        );
        assert!(
            msg.ends_with("(the kernel refused the table; its log says why)"),
            "{msg}"
        );
    }

    #[test]
    fn a_buffer_not_made_by_encode_never_reaches_the_kernel() {
        let null = std::fs::File::open("/dev/null").expect("/dev/null");
        let mut short = encode("root", 0, &[]).expect("valid");
        short[12..16].copy_from_slice(&4096u32.to_ne_bytes()); // data_size beyond the buffer
                                                               // /dev/null would answer a device-mapper ioctl with ENOTTY; EINVAL
                                                               // shows that the request was refused before it got there.
        let refused_here = |r: Result<Vec<u8>, DmError>| match r {
            Err(DmError::Ioctl { err, .. }) => {
                err.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error())
            }
            _ => false,
        };
        assert!(refused_here(call(
            &null,
            Command::DevCreate,
            "root",
            &short
        )));
        assert!(refused_here(call(
            &null,
            Command::DevCreate,
            "root",
            &short[..100]
        )));
        let good = encode("root", 0, &[]).expect("valid");
        assert!(
            !refused_here(call(&null, Command::DevCreate, "root", &good)),
            "a valid buffer does reach the kernel (which says ENOTTY)"
        );
    }
}
