//! Stage 1 (initrd): being written.
pub fn run() -> ! {
    crate::power::fail("stage 1 not written yet")
}
