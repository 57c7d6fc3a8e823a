//! The kernel's names of partition device nodes (`/dev/<name>`): how stage 1
//! and the update daemon get from a disk and a GPT entry number to a device.

/// The kernel's name for partition `number` of `disk`: `vda2`, but
/// `nvme0n1p2` and `mmcblk0p2` when the disk's name ends in a digit.
pub fn partition_node_name(disk: &str, number: u32) -> String {
    if disk.ends_with(|c: char| c.is_ascii_digit()) {
        format!("{disk}p{number}")
    } else {
        format!("{disk}{number}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_nodes_follow_the_kernel_naming() {
        assert_eq!(partition_node_name("vda", 2), "vda2");
        assert_eq!(partition_node_name("sdb", 12), "sdb12");
        assert_eq!(partition_node_name("nvme0n1", 3), "nvme0n1p3");
        assert_eq!(partition_node_name("mmcblk0", 1), "mmcblk0p1");
    }
}
