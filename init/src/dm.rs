//! Device-mapper, spoken directly: the three ioctls on /dev/mapper/control that
//! create a read-only dm-verity device (DM_DEV_CREATE, DM_TABLE_LOAD,
//! DM_DEV_SUSPEND to resume). The buffers are built by pure functions that
//! the unit tests check field by field against include/uapi/linux/dm-ioctl.h;
//! the only unsafe code is the ioctl call itself.

use rustix::fd::AsFd;
use rustix::ioctl::{Ioctl, IoctlOutput, Opcode};
use std::ffi::c_void;

/// `sizeof(struct dm_ioctl)`.
pub const DM_IOCTL_SIZE: usize = 312;
/// `sizeof(struct dm_target_spec)`.
pub const DM_TARGET_SPEC_SIZE: usize = 40;
const DM_NAME_LEN: usize = 128;
const DM_MAX_TYPE_NAME: usize = 16;

const DM_READONLY_FLAG: u32 = 1 << 0;

/// The device-mapper commands we use (the `nr` of `_IOWR(0xfd, nr, struct dm_ioctl)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    DevCreate = 3,
    DevSuspend = 6,
    TableLoad = 9,
}

impl Command {
    fn opcode(self) -> Opcode {
        rustix::ioctl::opcode::read_write::<[u8; DM_IOCTL_SIZE]>(0xfd, self as u8)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DmError {
    #[error("device name {0:?} is empty or longer than 127 bytes")]
    Name(String),
    #[error("target type {0:?} is empty or longer than 15 bytes")]
    TargetType(String),
    #[error("cannot open /dev/mapper/control: {0}")]
    Control(std::io::Error),
    #[error("device-mapper {command:?} on {name:?} failed: {err}")]
    Ioctl {
        command: Command,
        name: String,
        err: std::io::Error,
    },
}

/// The header common to every request: version 4.0.0, sizes, flags and name.
pub fn header(
    name: &str,
    flags: u32,
    data_size: usize,
    target_count: u32,
) -> Result<Vec<u8>, DmError> {
    if name.is_empty() || name.len() >= DM_NAME_LEN {
        return Err(DmError::Name(name.to_string()));
    }
    let mut b = vec![0u8; data_size.max(DM_IOCTL_SIZE)];
    b[0..4].copy_from_slice(&4u32.to_ne_bytes()); // version[0]: major
    let len = b.len() as u32;
    b[12..16].copy_from_slice(&len.to_ne_bytes()); // data_size
    b[16..20].copy_from_slice(&(DM_IOCTL_SIZE as u32).to_ne_bytes()); // data_start
    b[20..24].copy_from_slice(&target_count.to_ne_bytes());
    b[28..32].copy_from_slice(&flags.to_ne_bytes());
    b[48..48 + name.len()].copy_from_slice(name.as_bytes());
    Ok(b)
}

/// DM_TABLE_LOAD with one target covering `[0, sectors)`, read-only.
pub fn table_load(
    name: &str,
    target: &str,
    sectors: u64,
    params: &str,
) -> Result<Vec<u8>, DmError> {
    if target.is_empty() || target.len() >= DM_MAX_TYPE_NAME {
        return Err(DmError::TargetType(target.to_string()));
    }
    // The parameter string is NUL-terminated and the spec padded to 8 bytes.
    let spec_len = (DM_TARGET_SPEC_SIZE + params.len() + 1).div_ceil(8) * 8;
    let mut b = header(name, DM_READONLY_FLAG, DM_IOCTL_SIZE + spec_len, 1)?;
    let s = DM_IOCTL_SIZE;
    b[s..s + 8].copy_from_slice(&0u64.to_ne_bytes()); // sector_start
    b[s + 8..s + 16].copy_from_slice(&sectors.to_ne_bytes()); // length
    b[s + 20..s + 24].copy_from_slice(&(spec_len as u32).to_ne_bytes()); // next
    b[s + 24..s + 24 + target.len()].copy_from_slice(target.as_bytes());
    let p = s + DM_TARGET_SPEC_SIZE;
    b[p..p + params.len()].copy_from_slice(params.as_bytes());
    Ok(b)
}

/// The `dev` field of a reply (the kernel's huge_encode_dev) as (major, minor).
pub fn decode_dev(reply: &[u8]) -> (u32, u32) {
    let mut d = [0u8; 8];
    d.copy_from_slice(&reply[40..48]);
    let dev = u64::from_ne_bytes(d);
    let major = ((dev >> 8) & 0xfff) as u32;
    let minor = ((dev & 0xff) | ((dev >> 12) & 0xfff00)) as u32;
    (major, minor)
}

/// One ioctl call on a request buffer, which the kernel may write back into.
struct Call<'a> {
    command: Command,
    buf: &'a mut [u64],
}

// SAFETY: the opcode is the _IOWR encoding of `struct dm_ioctl` for this
// command, and the pointer handed to the kernel is a live, 8-byte aligned,
// exclusively borrowed buffer whose `data_size` field (set by `header`) never
// exceeds its length, so the kernel reads and writes only inside it.
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

fn call(
    control: impl AsFd,
    command: Command,
    name: &str,
    request: &[u8],
) -> Result<Vec<u8>, DmError> {
    // Copy into u64s so the buffer has the alignment of struct dm_ioctl.
    let mut words = vec![0u64; request.len().div_ceil(8)];
    for (i, chunk) in request.chunks(8).enumerate() {
        let mut w = [0u8; 8];
        w[..chunk.len()].copy_from_slice(chunk);
        words[i] = u64::from_ne_bytes(w);
    }
    // SAFETY: see the `Ioctl` impl of `Call`: the buffer outlives the call and
    // is as long as the request says.
    unsafe {
        rustix::ioctl::ioctl(
            control,
            Call {
                command,
                buf: &mut words,
            },
        )
    }
    .map_err(|e| DmError::Ioctl {
        command,
        name: name.to_string(),
        err: e.into(),
    })?;
    Ok(words.iter().flat_map(|w| w.to_ne_bytes()).collect())
}

/// Creates the read-only device `name` with one `target` and activates it;
/// returns its /dev/dm-N path (devtmpfs creates the node).
pub fn create_device(
    name: &str,
    target: &str,
    sectors: u64,
    params: &str,
) -> Result<String, DmError> {
    let control = rustix::fs::open(
        "/dev/mapper/control",
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| DmError::Control(e.into()))?;
    let reply = call(
        &control,
        Command::DevCreate,
        name,
        &header(name, 0, DM_IOCTL_SIZE, 0)?,
    )?;
    let (_, minor) = decode_dev(&reply);
    call(
        &control,
        Command::TableLoad,
        name,
        &table_load(name, target, sectors, params)?,
    )?;
    // DM_DEV_SUSPEND without DM_SUSPEND_FLAG resumes: the loaded table goes live.
    call(
        &control,
        Command::DevSuspend,
        name,
        &header(name, 0, DM_IOCTL_SIZE, 0)?,
    )?;
    Ok(format!("/dev/dm-{minor}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DM_UUID_LEN: usize = 129;

    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
    }

    #[test]
    fn opcodes_are_the_kernels() {
        // _IOWR(0xfd, 3, struct dm_ioctl) etc., as the C headers compute them.
        assert_eq!(Command::DevCreate.opcode(), 0xc138_fd03);
        assert_eq!(Command::DevSuspend.opcode(), 0xc138_fd06);
        assert_eq!(Command::TableLoad.opcode(), 0xc138_fd09);
    }

    #[test]
    fn header_layout() {
        let b = header("root", 0, DM_IOCTL_SIZE, 0).expect("valid");
        assert_eq!(b.len(), 312);
        assert_eq!(u32_at(&b, 0), 4);
        assert_eq!(u32_at(&b, 12), 312);
        assert_eq!(u32_at(&b, 16), 312);
        assert_eq!(&b[48..53], b"root\0");
        assert!(b[176..176 + DM_UUID_LEN].iter().all(|&c| c == 0));
    }

    #[test]
    fn table_load_layout() {
        let params = "1 /dev/vda2 /dev/vda3 4096 4096 64 1 sha256 ab -";
        let b = table_load("root", "verity", 512, params).expect("valid");
        assert_eq!(b.len() % 8, 0);
        assert_eq!(
            u32_at(&b, 12) as usize,
            b.len(),
            "data_size covers the whole buffer"
        );
        assert_eq!(u32_at(&b, 20), 1, "one target");
        assert_eq!(u32_at(&b, 28) & DM_READONLY_FLAG, DM_READONLY_FLAG);
        let s = DM_IOCTL_SIZE;
        assert_eq!(
            u64::from_ne_bytes(b[s + 8..s + 16].try_into().expect("8 bytes")),
            512
        );
        assert_eq!(&b[s + 24..s + 31], b"verity\0");
        let p = s + DM_TARGET_SPEC_SIZE;
        assert_eq!(&b[p..p + params.len()], params.as_bytes());
        assert_eq!(b[p + params.len()], 0, "parameters are NUL-terminated");
        assert_eq!(u32_at(&b, s + 20) as usize, b.len() - s);
    }

    #[test]
    fn bad_names_are_refused() {
        assert!(matches!(header("", 0, 312, 0), Err(DmError::Name(_))));
        assert!(matches!(
            header(&"x".repeat(128), 0, 312, 0),
            Err(DmError::Name(_))
        ));
        assert!(matches!(
            table_load("root", "a-very-long-target-name", 1, ""),
            Err(DmError::TargetType(_))
        ));
    }

    #[test]
    fn decodes_the_device_number() {
        let mut b = vec![0u8; 312];
        // major 253, minor 0x123 in huge_encode_dev form.
        let dev: u64 = (0x23) | (253 << 8) | (0x100 << 12);
        b[40..48].copy_from_slice(&dev.to_ne_bytes());
        assert_eq!(decode_dev(&b), (253, 0x123));
    }
}
