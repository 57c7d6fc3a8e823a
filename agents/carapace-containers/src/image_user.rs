//! The user a container runs as: the image configuration's `User`, in
//! Docker's forms (`""`, `uid`, `uid:gid`, `name`, `name:group`, mixed),
//! resolved to numeric ids against the image's own /etc/passwd and
//! /etc/group, as Docker and runc do.
//!
//! Rules (runc's): a numeric uid need not be in /etc/passwd (its group is
//! then 0 unless one is given); a name must be, except `root`, which is uid 0
//! even in an image without /etc/passwd; a group name must be in
//! /etc/group; without an explicit group, the groups of /etc/group that list
//! the user are its supplementary groups. The home directory (for `HOME`)
//! comes from /etc/passwd, else `/`.
//!
//! Parsing and resolving are pure ([`ImageUser::parse`], [`resolve`]);
//! [`read_image_file`] reads a file of the mounted rootfs without ever
//! following a link out of it (openat2 `RESOLVE_IN_ROOT`): the image is not
//! trusted.

use rustix::fs::{Mode, OFlags, ResolveFlags};
use std::io::Read;
use std::path::Path;

/// The largest /etc/passwd or /etc/group read from an image.
pub const MAX_FILE: u64 = 1024 * 1024;

/// One half of a `User` string: a number or a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Id {
    Number(u32),
    Name(String),
}

impl Id {
    fn parse(s: &str) -> Id {
        match s.parse::<u32>() {
            Ok(n) => Id::Number(n),
            Err(_) => Id::Name(s.to_string()),
        }
    }
}

/// The image configuration's `User`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageUser {
    pub user: Id,
    pub group: Option<Id>,
}

impl ImageUser {
    /// Parses `user[:group]`; an empty or missing `User` is root.
    pub fn parse(s: Option<&str>) -> ImageUser {
        let s = s.unwrap_or("").trim();
        if s.is_empty() {
            return ImageUser {
                user: Id::Number(0),
                group: None,
            };
        }
        match s.split_once(':') {
            Some((user, group)) => ImageUser {
                user: Id::parse(if user.is_empty() { "0" } else { user }),
                group: (!group.is_empty()).then(|| Id::parse(group)),
            },
            None => ImageUser {
                user: Id::parse(s),
                group: None,
            },
        }
    }
}

/// The numeric identity of the container's process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserIds {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, sorted, without `gid`.
    pub additional_gids: Vec<u32>,
    /// The home directory, for `HOME` when neither the image nor the settings set it.
    pub home: String,
}

impl UserIds {
    /// uid 0, gid 0, home `/root`.
    pub fn root() -> UserIds {
        UserIds {
            uid: 0,
            gid: 0,
            additional_gids: Vec::new(),
            home: "/root".into(),
        }
    }
}

/// Why a `User` cannot be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("user {0:?} of the image is not in the image's /etc/passwd")]
    UnknownUser(String),
    #[error("group {0:?} of the image is not in the image's /etc/group")]
    UnknownGroup(String),
    #[error("cannot read {file} of the image: {why}")]
    Read { file: String, why: String },
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    text.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 6 || line.starts_with('#') {
            return None;
        }
        Some(PasswdEntry {
            name: f[0],
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5],
        })
    })
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

fn group_entries(text: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    text.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 3 || line.starts_with('#') {
            return None;
        }
        Some(GroupEntry {
            name: f[0],
            gid: f[2].parse().ok()?,
            members: f
                .get(3)
                .map(|m| m.split(',').filter(|s| !s.is_empty()).collect())
                .unwrap_or_default(),
        })
    })
}

/// Resolves `user` against the texts of the image's /etc/passwd and
/// /etc/group (None when the image has no such file).
pub fn resolve(
    user: &ImageUser,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<UserIds, UserError> {
    let passwd = passwd.unwrap_or("");
    let group = group.unwrap_or("");
    let found = match &user.user {
        Id::Number(uid) => passwd_entries(passwd).find(|e| e.uid == *uid),
        Id::Name(name) => passwd_entries(passwd).find(|e| e.name == name),
    };
    let (uid, primary_gid, home, name) = match (&user.user, found) {
        (_, Some(e)) => (e.uid, e.gid, e.home.to_string(), Some(e.name.to_string())),
        (Id::Number(uid), None) => (*uid, 0, "/".to_string(), None),
        (Id::Name(name), None) if name == "root" => {
            (0, 0, "/root".to_string(), Some("root".to_string()))
        }
        (Id::Name(name), None) => return Err(UserError::UnknownUser(name.clone())),
    };
    let home = if home.is_empty() { "/".into() } else { home };
    let (gid, additional_gids) = match &user.group {
        Some(Id::Number(gid)) => (*gid, Vec::new()),
        Some(Id::Name(g)) => match group_entries(group).find(|e| e.name == g) {
            Some(e) => (e.gid, Vec::new()),
            None => return Err(UserError::UnknownGroup(g.clone())),
        },
        None => {
            let mut extra: Vec<u32> = match &name {
                Some(name) => group_entries(group)
                    .filter(|e| e.members.contains(&name.as_str()))
                    .map(|e| e.gid)
                    .filter(|g| *g != primary_gid)
                    .collect(),
                None => Vec::new(),
            };
            extra.sort_unstable();
            extra.dedup();
            (primary_gid, extra)
        }
    };
    Ok(UserIds {
        uid,
        gid,
        additional_gids,
        home,
    })
}

/// Reads `relative` (like `etc/passwd`) inside `rootfs`, resolving every
/// link as if `rootfs` were `/`. None when the file does not exist.
pub fn read_image_file(rootfs: &Path, relative: &str) -> Result<Option<String>, UserError> {
    let fail = |why: String| UserError::Read {
        file: format!("/{relative}"),
        why,
    };
    let root = rustix::fs::open(
        rootfs,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| fail(format!("{}: {e}", rootfs.display())))?;
    let fd = match rustix::fs::openat2(
        &root,
        relative,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(e) => return Err(fail(e.to_string())),
    };
    let stat = rustix::fs::fstat(&fd).map_err(|e| fail(e.to_string()))?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(fail("not a regular file".into()));
    }
    let mut text = String::new();
    std::fs::File::from(fd)
        .take(MAX_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| fail(e.to_string()))?;
    if text.len() as u64 > MAX_FILE {
        return Err(fail(format!("larger than {MAX_FILE} bytes")));
    }
    Ok(Some(text))
}

/// Resolves the image's `User` against the files of the mounted `rootfs`.
pub fn resolve_in_rootfs(user: Option<&str>, rootfs: &Path) -> Result<UserIds, UserError> {
    let parsed = ImageUser::parse(user);
    let passwd = read_image_file(rootfs, "etc/passwd")?;
    let group = read_image_file(rootfs, "etc/group")?;
    resolve(&parsed, passwd.as_deref(), group.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        # a comment\n\
        nginx:x:101:101:nginx user:/nonexistent:/bin/false\n\
        app:x:1000:1000::/home/app:/bin/sh\n\
        broken line\n";
    const GROUP: &str = "root:x:0:\n\
        nginx:x:101:\n\
        app:x:1000:\n\
        audio:x:29:app,nginx\n\
        video:x:44:app\n";

    fn ids(user: &str) -> Result<UserIds, UserError> {
        resolve(&ImageUser::parse(Some(user)), Some(PASSWD), Some(GROUP))
    }

    #[test]
    fn docker_user_forms_parse() {
        assert_eq!(
            ImageUser::parse(None),
            ImageUser {
                user: Id::Number(0),
                group: None
            }
        );
        assert_eq!(
            ImageUser::parse(Some("1000:44")),
            ImageUser {
                user: Id::Number(1000),
                group: Some(Id::Number(44))
            }
        );
        assert_eq!(
            ImageUser::parse(Some("app:video")),
            ImageUser {
                user: Id::Name("app".into()),
                group: Some(Id::Name("video".into()))
            }
        );
        assert_eq!(
            ImageUser::parse(Some(":5")),
            ImageUser {
                user: Id::Number(0),
                group: Some(Id::Number(5))
            }
        );
    }

    #[test]
    fn an_empty_user_is_root_with_roots_home() {
        let root = resolve(&ImageUser::parse(Some("")), Some(PASSWD), Some(GROUP)).expect("root");
        assert_eq!(root, UserIds::root());
    }

    #[test]
    fn a_name_takes_uid_gid_home_and_supplementary_groups_from_the_image() {
        assert_eq!(
            ids("app").expect("app"),
            UserIds {
                uid: 1000,
                gid: 1000,
                additional_gids: vec![29, 44],
                home: "/home/app".into()
            }
        );
    }

    #[test]
    fn an_explicit_group_replaces_primary_and_supplementary_groups() {
        let u = ids("nginx:video").expect("nginx:video");
        assert_eq!((u.uid, u.gid, u.additional_gids), (101, 44, vec![]));
        let u = ids("app:7").expect("app:7");
        assert_eq!((u.uid, u.gid), (1000, 7));
    }

    #[test]
    fn a_numeric_uid_needs_no_passwd_entry() {
        let u = ids("65532").expect("65532");
        assert_eq!((u.uid, u.gid, u.home.as_str()), (65532, 0, "/"));
        let u = resolve(&ImageUser::parse(Some("472:472")), None, None).expect("472");
        assert_eq!((u.uid, u.gid), (472, 472));
        // A numeric uid that is in passwd gets its group from there.
        assert_eq!(ids("101").expect("101").gid, 101);
    }

    #[test]
    fn unknown_names_are_refused_saying_which() {
        assert_eq!(
            ids("postgres").expect_err("unknown"),
            UserError::UnknownUser("postgres".into())
        );
        assert_eq!(
            ids("app:wheel").expect_err("unknown group"),
            UserError::UnknownGroup("wheel".into())
        );
        assert_eq!(
            ids("postgres").expect_err("unknown").to_string(),
            "user \"postgres\" of the image is not in the image's /etc/passwd"
        );
        // root needs no /etc/passwd at all (scratch images).
        assert_eq!(
            resolve(&ImageUser::parse(Some("root")), None, None).expect("root"),
            UserIds::root()
        );
    }

    #[test]
    fn image_files_are_read_inside_the_rootfs_even_through_absolute_links() {
        let d = std::env::temp_dir().join(format!("carapace-user-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("etc")).expect("etc");
        std::fs::create_dir_all(d.join("real")).expect("real");
        std::fs::write(d.join("real/passwd"), "app:x:7:8::/app:/bin/sh\n").expect("passwd");
        // An absolute link must resolve inside the rootfs, not on the host.
        std::os::unix::fs::symlink("/real/passwd", d.join("etc/passwd")).expect("link");
        std::os::unix::fs::symlink("/etc/hostname", d.join("etc/group")).expect("link");
        let u = resolve_in_rootfs(Some("app"), &d).expect("resolved through the link");
        assert_eq!((u.uid, u.gid, u.home.as_str()), (7, 8, "/app"));
        // etc/group points at /etc/hostname of the rootfs, which is absent.
        assert_eq!(read_image_file(&d, "etc/group").expect("read"), None);
        assert_eq!(read_image_file(&d, "etc/shadow").expect("read"), None);
        std::fs::remove_dir_all(&d).ok();
    }
}
