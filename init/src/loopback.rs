//! Brings up the loopback interface with SIOCGIFFLAGS/SIOCSIFFLAGS on a
//! datagram socket: the one network step PID 1 takes itself.

use rustix::ioctl::{Ioctl, IoctlOutput, Opcode};
use std::ffi::c_void;

const SIOCGIFFLAGS: Opcode = 0x8913;
const SIOCSIFFLAGS: Opcode = 0x8914;
const IFF_UP: i16 = 0x1;
/// `sizeof(struct ifreq)` on 64-bit Linux.
const IFREQ_SIZE: usize = 40;

/// A `struct ifreq` naming `name`, with `flags` in the union.
pub fn ifreq(name: &str, flags: i16) -> [u8; IFREQ_SIZE] {
    let mut b = [0u8; IFREQ_SIZE];
    let n = name.len().min(15);
    b[..n].copy_from_slice(&name.as_bytes()[..n]);
    b[16..18].copy_from_slice(&flags.to_ne_bytes());
    b
}

struct IfreqCall<'a> {
    opcode: Opcode,
    req: &'a mut [u8; IFREQ_SIZE],
}

// SAFETY: SIOCGIFFLAGS and SIOCSIFFLAGS take a pointer to a `struct ifreq`;
// `req` is a live, exclusively borrowed buffer of exactly that size (the
// kernel copies it in and, for the get, back out; alignment of 1 is accepted
// because the kernel uses copy_from_user/copy_to_user).
unsafe impl Ioctl for IfreqCall<'_> {
    type Output = ();
    const IS_MUTATING: bool = true;

    fn opcode(&self) -> Opcode {
        self.opcode
    }

    fn as_ptr(&mut self) -> *mut c_void {
        self.req.as_mut_ptr().cast()
    }

    unsafe fn output_from_ptr(_out: IoctlOutput, _ptr: *mut c_void) -> rustix::io::Result<()> {
        Ok(())
    }
}

/// Sets IFF_UP on `lo`.
pub fn up() -> std::io::Result<()> {
    use rustix::net::{socket, AddressFamily, SocketType};
    let sock = socket(AddressFamily::INET, SocketType::DGRAM, None)?;
    let mut req = ifreq("lo", 0);
    // SAFETY: see the `Ioctl` impl of `IfreqCall`.
    unsafe {
        rustix::ioctl::ioctl(
            &sock,
            IfreqCall {
                opcode: SIOCGIFFLAGS,
                req: &mut req,
            },
        )
    }?;
    let flags = i16::from_ne_bytes([req[16], req[17]]) | IFF_UP;
    let mut req = ifreq("lo", flags);
    // SAFETY: see the `Ioctl` impl of `IfreqCall`.
    unsafe {
        rustix::ioctl::ioctl(
            &sock,
            IfreqCall {
                opcode: SIOCSIFFLAGS,
                req: &mut req,
            },
        )
    }?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_layout() {
        let r = ifreq("lo", IFF_UP);
        assert_eq!(&r[..3], b"lo\0");
        assert_eq!(i16::from_ne_bytes([r[16], r[17]]), 1);
        let long = ifreq("a-very-long-interface-name", 0);
        assert_eq!(long[15], 0, "the name stays NUL-terminated");
    }
}
