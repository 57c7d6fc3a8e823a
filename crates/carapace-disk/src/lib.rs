//! carapace-disk: the node's on-disk formats, one of each, shared by stage 1
//! (which reads them to boot), the update daemon (which writes the inactive
//! slot with them) and xtask (which builds and bundles images with them).
//!
//! - [`gpt`]: the GUID partition table, read (with fallback to the backup
//!   copy), one entry's identity rewritten, a damaged primary restored;
//! - [`verity`]: the dm-verity superblock and the device-mapper table line;
//! - [`verity_tree`]: building and checking a verity hash tree, byte for
//!   byte as `veritysetup format` writes it;
//! - [`root_hash`]: the root hash and the partition UUIDs it names;
//! - [`partition_node`]: the kernel's device name of a partition;
//! - [`pe`]: the sections of a unified kernel image (PE), its command line.
//!
//! Pure: bytes in, values or errors out; the readers and writers take any
//! `Read + Seek` (`+ Write`) and open nothing themselves. Nothing here
//! panics on input: every format is read as untrusted.

pub mod gpt;
pub mod partition_node;
pub mod pe;
pub mod root_hash;
pub mod verity;
pub mod verity_tree;
