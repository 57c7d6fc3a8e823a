//! The kernel command line: the only input stage 1 trusts, because it sits
//! inside the signed unified kernel image. The root hash `roothash=` names,
//! and the partition UUIDs that follow from it, are
//! [`carapace_disk::root_hash`]'s; this module only finds it in the line.

use carapace_disk::root_hash::RootHash;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CmdlineError {
    #[error("no roothash= on the kernel command line")]
    Missing,
    #[error("roothash= given more than once on the kernel command line")]
    Repeated,
    #[error(
        "roothash={value:?} is not hexadecimal of an even length between 32 and 128 characters"
    )]
    Malformed { value: String },
}

/// Splits a kernel command line into words, honouring double quotes the way
/// the kernel does (`foo="a b"` is one word, quotes removed).
pub fn words(cmdline: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

/// The value of `key=` if it appears exactly once.
pub fn value<'a>(words: &'a [String], key: &str) -> Result<Option<&'a str>, CmdlineError> {
    let mut found = None;
    for w in words {
        if let Some((k, v)) = w.split_once('=') {
            if k == key {
                if found.is_some() {
                    return Err(CmdlineError::Repeated);
                }
                found = Some(v);
            }
        }
    }
    Ok(found)
}

/// Finds and parses `roothash=` in a whole kernel command line.
pub fn roothash(cmdline: &str) -> Result<RootHash, CmdlineError> {
    let words = words(cmdline);
    match value(&words, "roothash")? {
        Some(v) => RootHash::from_hex(v).map_err(|e| CmdlineError::Malformed { value: e.value }),
        None => Err(CmdlineError::Missing),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "0b6e1c5f8a0f4e1d9a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7081";

    #[test]
    fn finds_roothash_among_other_words() {
        let line = format!("console=ttyS0 quiet roothash={HASH} rw\n");
        let hash = roothash(&line).expect("parses");
        assert_eq!(hash.to_hex(), HASH);
        assert_eq!(hash.as_bytes().len(), 32);
        assert_eq!(hash.data_partition_uuid()[0], 0x0b);
        assert_eq!(hash.hash_partition_uuid()[15], 0x81);
        assert_eq!(hash.hash_partition_uuid()[0], 0x92);
    }

    #[test]
    fn missing_roothash_is_an_error() {
        assert_eq!(
            roothash("console=ttyS0 root=/dev/vda"),
            Err(CmdlineError::Missing)
        );
        assert_eq!(roothash(""), Err(CmdlineError::Missing));
    }

    #[test]
    fn malformed_roothash_is_an_error() {
        for bad in [
            "roothash=+b6e1c5f8a0f4e1d9a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7081",
            "roothash=",
            "roothash=xyz",
            "roothash=abc",
            "roothash=0b6e1c5f8a0f4e1d9a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708g",
        ] {
            assert!(
                matches!(roothash(bad), Err(CmdlineError::Malformed { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn repeated_roothash_is_an_error() {
        let line = format!("roothash={HASH} roothash={HASH}");
        assert_eq!(roothash(&line), Err(CmdlineError::Repeated));
    }

    #[test]
    fn quotes_group_words() {
        assert_eq!(
            words(r#"a="b c" d"#),
            vec!["a=b c".to_string(), "d".to_string()]
        );
    }
}
