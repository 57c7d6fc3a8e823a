//! The two root slots of the boot disk: each a root partition (erofs) and
//! its verity partition, paired in table order (the first root partition
//! with the first verity partition: slot `a`, the second ones: slot `b`).
//! The active slot is the one whose partition UUIDs are the halves of the
//! running root hash; the other one is where an update goes.

use carapace_disk::gpt::{self, types, Partition};
use carapace_disk::root_hash::RootHash;

/// One slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub letter: char,
    pub data: Partition,
    pub verity: Partition,
}

impl Slot {
    /// The version the slot's label names (`carapace_<version>`); None for
    /// an empty slot (`_empty`) or a label of something else.
    pub fn version(&self) -> Option<String> {
        let v = self.data.name.strip_prefix("carapace_")?;
        (!v.is_empty()).then(|| v.to_string())
    }
}

/// The running slot and the other one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slots {
    pub active: Slot,
    pub inactive: Slot,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SlotError {
    #[error("the boot disk has {roots} root and {verities} verity partitions, not two of each")]
    Layout { roots: usize, verities: usize },
    #[error("no slot holds the running root hash (partition UUID {0})")]
    NotRunning(gpt::Guid),
}

/// The slots of a disk, given the running root hash.
pub fn slots(parts: &[Partition], roothash: &[u8; 32]) -> Result<Slots, SlotError> {
    let roots: Vec<&Partition> = gpt::partitions_by_type(parts, types::ROOT_X86_64).collect();
    let verities: Vec<&Partition> =
        gpt::partitions_by_type(parts, types::ROOT_VERITY_X86_64).collect();
    if roots.len() != 2 || verities.len() != 2 {
        return Err(SlotError::Layout {
            roots: roots.len(),
            verities: verities.len(),
        });
    }
    let slot = |i: usize| Slot {
        letter: (b'a' + i as u8) as char,
        data: roots[i].clone(),
        verity: verities[i].clone(),
    };
    let first_half = RootHash::from(*roothash).data_partition_uuid();
    let running = roots
        .iter()
        .position(|p| p.unique_guid.0 == first_half)
        .ok_or(SlotError::NotRunning(gpt::Guid(first_half)))?;
    Ok(Slots {
        active: slot(running),
        inactive: slot(1 - running),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(number: u32, type_guid: gpt::Guid, uuid: u8, name: &str) -> Partition {
        Partition {
            number,
            type_guid,
            unique_guid: gpt::Guid([uuid; 16]),
            first_lba: u64::from(number) * 100,
            last_lba: u64::from(number) * 100 + 99,
            attributes: 0,
            name: name.into(),
        }
    }

    fn disk() -> Vec<Partition> {
        vec![
            part(1, types::ESP, 1, "esp"),
            part(2, types::ROOT_X86_64, 0xa0, "carapace_0.1.0"),
            part(3, types::ROOT_VERITY_X86_64, 0xa1, "carapace_0.1.0_verity"),
            part(4, types::ROOT_X86_64, 0xb0, "_empty"),
            part(5, types::ROOT_VERITY_X86_64, 0xb1, "_empty"),
            part(6, types::VAR, 6, "var"),
        ]
    }

    fn hash(first: u8, second: u8) -> [u8; 32] {
        let mut h = [first; 32];
        h[16..].fill(second);
        h
    }

    #[test]
    fn the_running_slot_is_found_by_the_root_hash_and_the_other_is_inactive() {
        let s = slots(&disk(), &hash(0xa0, 0xa1)).expect("slots");
        assert_eq!(
            (
                s.active.letter,
                s.active.data.number,
                s.active.verity.number
            ),
            ('a', 2, 3)
        );
        assert_eq!((s.inactive.letter, s.inactive.data.number), ('b', 4));
        assert_eq!(s.active.version().as_deref(), Some("0.1.0"));
        assert_eq!(s.inactive.version(), None);
        let s = slots(&disk(), &hash(0xb0, 0xb1)).expect("slots");
        assert_eq!((s.active.letter, s.inactive.letter), ('b', 'a'));
    }

    #[test]
    fn a_disk_without_two_slots_or_without_the_running_one_is_refused() {
        let mut one = disk();
        one.retain(|p| p.number < 4);
        assert_eq!(
            slots(&one, &hash(0xa0, 0xa1)),
            Err(SlotError::Layout {
                roots: 1,
                verities: 1
            })
        );
        assert!(matches!(
            slots(&disk(), &hash(0xcc, 0xa1)),
            Err(SlotError::NotRunning(_))
        ));
    }
}
