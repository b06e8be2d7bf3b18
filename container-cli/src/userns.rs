//! `--userns`, `--uidmap` and `--gidmap` of `run`, as podman takes them: which user
//! namespace a new container gets, and for `--userns=auto` a range of host ids that no
//! other container of this `--root` maps.
//!
//! - `--userns=host` (the default): the host's; the container's root is the host's.
//! - `--userns=auto[:size=N]`: one of its own mapping container ids 0..N (65536 by
//!   default) to N host ids from 100000 up that no container of this store maps, in both
//!   maps; the choice is recorded in the container's config.json.
//! - `--uidmap CONTAINER:HOST:SIZE` (repeatable) and `--gidmap ...`: one of its own
//!   with these maps (the gid map is the uid map unless given).

use std::fs::File;
use std::path::Path;

use crate::store::{IdMap, Store, UserNs};
use crate::Error;

/// Where `--userns=auto` starts looking: above the ids of any ordinary user, where
/// /etc/subuid ranges begin by convention.
const AUTO_FIRST: u64 = 100_000;
/// `--userns=auto`'s size when none is given (podman's).
const AUTO_SIZE: u32 = 65_536;
/// The kernel takes at most this many lines in a uid or gid map.
const MAX_LINES: usize = 340;

/// What `run` was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Host,
    Auto { size: u32 },
    Maps { uid: Vec<IdMap>, gid: Vec<IdMap> },
}

/// Reads `--userns` (None: not given), `--uidmap` and `--gidmap`.
pub fn request(
    userns: Option<&str>,
    uidmap: &[String],
    gidmap: &[String],
) -> Result<Request, Error> {
    let bad = |what: String| Error::Msg(format!("--userns={}: {what}", userns.unwrap_or("")));
    let auto = match userns {
        None => None,
        Some("host") => {
            if !uidmap.is_empty() || !gidmap.is_empty() {
                return Err(Error::Msg(
                    "--uidmap and --gidmap make a user namespace of its own: not with --userns=host"
                        .into(),
                ));
            }
            return Ok(Request::Host);
        }
        Some("auto") => Some(AUTO_SIZE),
        Some(other) => match other.strip_prefix("auto:size=") {
            Some(n) => Some(
                n.parse::<u32>()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| bad(format!("{n:?} is not a number of ids")))?,
            ),
            None => {
                return Err(bad(
                    "give host, auto or auto:size=N (or --uidmap/--gidmap)".into()
                ))
            }
        },
    };
    if let Some(size) = auto {
        if !uidmap.is_empty() || !gidmap.is_empty() {
            return Err(Error::Msg(
                "--userns=auto chooses the maps itself: give either it or --uidmap/--gidmap".into(),
            ));
        }
        return Ok(Request::Auto { size });
    }
    if uidmap.is_empty() && gidmap.is_empty() {
        return Ok(Request::Host);
    }
    let parse_all = |flag: &str, texts: &[String]| -> Result<Vec<IdMap>, Error> {
        let maps = texts
            .iter()
            .map(|t| parse_map(flag, t))
            .collect::<Result<Vec<_>, _>>()?;
        check_map(flag, &maps)?;
        Ok(maps)
    };
    let uid = parse_all("--uidmap", uidmap)?;
    let gid = parse_all("--gidmap", gidmap)?;
    // One map given stands for both, as podman takes it.
    let (uid, gid) = match (uid.is_empty(), gid.is_empty()) {
        (true, _) => (gid.clone(), gid),
        (_, true) => (uid.clone(), uid),
        _ => (uid, gid),
    };
    Ok(Request::Maps { uid, gid })
}

/// `CONTAINER:HOST:SIZE`.
fn parse_map(flag: &str, text: &str) -> Result<IdMap, Error> {
    let bad = || {
        Error::Msg(format!(
            "{flag} {text}: give CONTAINER:HOST:SIZE (ids and a count of them)"
        ))
    };
    let fields: Vec<u32> = text
        .split(':')
        .map(|f| f.parse::<u32>().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    let [container, host, size] = fields[..] else {
        return Err(bad());
    };
    let map = IdMap {
        container,
        host,
        size,
    };
    let fits = |range: std::ops::Range<u64>| range.end <= u64::from(u32::MAX);
    if size == 0 || !fits(map.container_range()) || !fits(map.host_range()) {
        return Err(Error::Msg(format!(
            "{flag} {text}: not a range of ids (a size of at least 1, ending below 2^32 - 1)"
        )));
    }
    Ok(map)
}

/// What the kernel refuses in a map, refused first with a message: too many lines,
/// ranges that overlap on either side.
fn check_map(flag: &str, maps: &[IdMap]) -> Result<(), Error> {
    if maps.len() > MAX_LINES {
        return Err(Error::Msg(format!(
            "{flag}: {} ranges (the kernel takes at most {MAX_LINES})",
            maps.len()
        )));
    }
    let overlap =
        |a: &std::ops::Range<u64>, b: &std::ops::Range<u64>| a.start < b.end && b.start < a.end;
    for (i, a) in maps.iter().enumerate() {
        for b in &maps[i + 1..] {
            if overlap(&a.container_range(), &b.container_range())
                || overlap(&a.host_range(), &b.host_range())
            {
                return Err(Error::Msg(format!(
                    "{flag} {} and {}: the ranges overlap",
                    a.text(),
                    b.text()
                )));
            }
        }
    }
    Ok(())
}

/// Held while a new container's ids are chosen and its config written, so that two
/// `run --userns=auto` at once never take the same range.
pub struct AllocationLock(#[allow(dead_code)] nix::fcntl::Flock<File>);

pub fn lock(store: &Store) -> Result<AllocationLock, Error> {
    let path = store.root.join("userns.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(&path, "open", e))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map(AllocationLock)
        .map_err(|(_, e)| Error::io(&path, "lock", e.into()))
}

/// The user namespace `request` makes for a new container of `store` (taken under
/// `_lock`): for `auto`, the lowest range of `size` host ids from 100000 up that no
/// container of the store maps, as both its uid and gid maps.
pub fn resolve(
    store: &Store,
    request: Request,
    _lock: &AllocationLock,
) -> Result<Option<UserNs>, Error> {
    let size = match request {
        Request::Host => return Ok(None),
        Request::Maps { uid, gid } => {
            return Ok(Some(UserNs {
                auto: false,
                uid_map: uid,
                gid_map: gid,
            }))
        }
        Request::Auto { size } => size,
    };
    let taken: Vec<std::ops::Range<u64>> = store
        .list()?
        .iter()
        .filter_map(|c| c.config.userns.as_ref())
        .flat_map(|u| u.uid_map.iter().chain(&u.gid_map))
        .map(IdMap::host_range)
        .collect();
    let host = first_free(&taken, u64::from(size)).ok_or_else(|| {
        Error::Msg(format!(
            "--userns=auto: no {size} host ids are left that no other container maps"
        ))
    })?;
    let map = vec![IdMap {
        container: 0,
        host,
        size,
    }];
    Ok(Some(UserNs {
        auto: true,
        uid_map: map.clone(),
        gid_map: map,
    }))
}

/// The lowest start from `AUTO_FIRST` of `size` ids overlapping none of `taken`.
fn first_free(taken: &[std::ops::Range<u64>], size: u64) -> Option<u32> {
    let mut start = AUTO_FIRST;
    while let Some(r) = taken
        .iter()
        .find(|r| r.start < start + size && start < r.end)
    {
        start = r.end;
    }
    (start + size <= u64::from(u32::MAX))
        .then_some(start)
        .and_then(|s| u32::try_from(s).ok())
}

/// Gives the root of the container's writable layer (`upper`) to the container's root,
/// as podman does for a user namespace of its own: otherwise nothing could be created
/// in its `/` from inside (host root owns it, and is nobody there).
pub fn give_upper(upper: &Path, userns: &UserNs) -> Result<(), Error> {
    let Some((uid, gid)) = userns.host_root() else {
        return Ok(());
    };
    std::os::unix::fs::chown(upper, Some(uid), Some(gid))
        .map_err(|e| Error::io(upper, "give to the container's root", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(container: u32, host: u32, size: u32) -> IdMap {
        IdMap {
            container,
            host,
            size,
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn requests_as_podman_takes_them() {
        assert_eq!(request(None, &[], &[]).unwrap(), Request::Host);
        assert_eq!(request(Some("host"), &[], &[]).unwrap(), Request::Host);
        assert_eq!(
            request(Some("auto"), &[], &[]).unwrap(),
            Request::Auto { size: 65536 }
        );
        assert_eq!(
            request(Some("auto:size=1000"), &[], &[]).unwrap(),
            Request::Auto { size: 1000 }
        );
        let both = request(None, &strings(&["0:200000:65536"]), &[]).unwrap();
        assert_eq!(
            both,
            Request::Maps {
                uid: vec![m(0, 200000, 65536)],
                gid: vec![m(0, 200000, 65536)]
            }
        );
        let two = request(
            None,
            &strings(&["0:300000:1000", "1000:1000:1"]),
            &strings(&["0:400000:10"]),
        )
        .unwrap();
        assert_eq!(
            two,
            Request::Maps {
                uid: vec![m(0, 300000, 1000), m(1000, 1000, 1)],
                gid: vec![m(0, 400000, 10)]
            }
        );
        for (userns, uid) in [
            (Some("auto"), vec!["0:1:1"]),
            (Some("host"), vec!["0:1:1"]),
            (Some("auto:size=0"), vec![]),
            (Some("auto:size=x"), vec![]),
            (Some("keep-id"), vec![]),
            (None, vec!["0:1"]),
            (None, vec!["0:1:0"]),
            (None, vec!["0:-1:1"]),
            (None, vec!["0:4294967295:1"]),
            (None, vec!["0:100000:10", "5:200000:10"]),
            (None, vec!["0:100000:10", "10:100005:10"]),
        ] {
            assert!(
                request(userns, &strings(&uid), &[]).is_err(),
                "{userns:?} {uid:?}"
            );
        }
    }

    #[test]
    fn auto_takes_the_lowest_range_no_one_maps() {
        assert_eq!(first_free(&[], 65536), Some(100_000));
        let taken = [100_000..165_536, 300_000..300_010];
        assert_eq!(first_free(&taken, 65536), Some(165_536));
        assert_eq!(first_free(&taken, 200_000), Some(300_010));
        let everything = 0..u64::from(u32::MAX);
        assert_eq!(first_free(std::slice::from_ref(&everything), 1), None);
    }

    #[test]
    fn host_ids_of_the_container_root() {
        let u = UserNs {
            auto: false,
            uid_map: vec![m(1000, 5000, 1), m(0, 100000, 10)],
            gid_map: vec![m(0, 7, 1)],
        };
        assert_eq!(u.host_root(), Some((100000, 7)));
        assert_eq!(UserNs::host_id(&u.uid_map, 9), Some(100009));
        assert_eq!(UserNs::host_id(&u.uid_map, 10), None);
        assert_eq!(UserNs::proc_text(&u.uid_map), "1000 5000 1\n0 100000 10\n");
    }
}
