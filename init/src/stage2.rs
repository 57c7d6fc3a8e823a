//! Stage 2: being written.
pub fn run() -> ! {
    crate::power::fail("stage 2 not written yet")
}
