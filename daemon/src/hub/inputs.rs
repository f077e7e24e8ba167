//! Files on the hub's own host named by a submission (`source_file_path`): taken only from the
//! directories the operator listed in `input_dirs`, never from the hub's data or content
//! directory, and checked on the file actually opened (its real path from `/proc/self/fd`), so a
//! symlink swapped in between a check and the open cannot redirect the read. Files with more
//! than one hard link are refused (a link has no path of its own to check).

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use crate::config::HubConfig;

/// Why a hub-side path was not taken. `Refused` never says whether the file exists.
#[derive(Debug)]
pub enum InputError {
    /// Not an absolute path.
    NotAbsolute,
    /// Outside every input directory, inside the hub's own directories, not a regular file,
    /// or no input directory is configured.
    Refused,
    /// Inside an input directory but not there.
    NotFound,
    /// Inside an input directory, but reading it failed.
    Io(std::io::Error),
}

/// The directories a submission may name files in, and those it never may.
#[derive(Debug, Clone, Default)]
pub struct InputPolicy {
    /// As configured, made absolute and without `.`/`..`; resolved (symlinks) on each request,
    /// so a directory created or remounted since the start counts.
    allowed: Vec<PathBuf>,
    denied: Vec<PathBuf>,
}

impl InputPolicy {
    /// From the configuration: `input_dirs`, less the data and content directories.
    pub fn new(config: &HubConfig) -> Self {
        let denied = [config.data.clone(), config.store_dir(), config.db_path()]
            .iter()
            .map(|p| resolve(p))
            .collect();
        Self {
            allowed: config.input_dirs.iter().map(|d| lexical(d)).collect(),
            denied,
        }
    }

    /// Whether any input directory is configured.
    pub fn is_empty(&self) -> bool {
        self.allowed.is_empty()
    }

    /// Whether `real` (a resolved path) lies under one of `resolved` (the input directories
    /// resolved now) and outside the hub's own directories.
    fn permits(&self, resolved: &[PathBuf], real: &Path) -> bool {
        resolved.iter().any(|d| real.starts_with(d))
            && !self.denied.iter().any(|d| real.starts_with(d))
    }

    /// Open `path` for reading if policy allows it: a regular file whose real path lies under
    /// an input directory and outside the hub's own directories. Blocking.
    pub fn open(&self, path: &str) -> Result<(std::fs::File, PathBuf), InputError> {
        let p = Path::new(path);
        if !p.is_absolute() {
            return Err(InputError::NotAbsolute);
        }
        // Cheap refusal first: a path that is not even written under an input directory is
        // refused without touching the file system (so nothing about it can be learned).
        let written = lexical(p);
        let resolved: Vec<PathBuf> = self
            .allowed
            .iter()
            .filter_map(|d| d.canonicalize().ok())
            .collect();
        if !self
            .allowed
            .iter()
            .chain(&resolved)
            .any(|d| written.starts_with(d))
        {
            return Err(InputError::Refused);
        }
        // O_NONBLOCK: opening a FIFO must not hang the request (it is refused below as not a
        // regular file); regular files ignore the flag.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(&written);
        let file = match file {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Say "not found" only where the caller may look: the nearest existing
                // ancestor resolves inside an input directory.
                let inside = written
                    .ancestors()
                    .skip(1)
                    .find_map(|a| a.canonicalize().ok())
                    .is_some_and(|a| self.permits(&resolved, &a));
                return Err(if inside {
                    InputError::NotFound
                } else {
                    InputError::Refused
                });
            }
            Err(_) => return Err(InputError::Refused),
        };
        let real = opened_path(&file).ok_or(InputError::Refused)?;
        if !self.permits(&resolved, &real) {
            return Err(InputError::Refused);
        }
        let meta = file.metadata().map_err(InputError::Io)?;
        // A hard link has no path of its own to check: one made inside an input directory to
        // a file of the hub's would pass the path check.
        use std::os::unix::fs::MetadataExt;
        if !meta.is_file() || meta.nlink() > 1 {
            return Err(InputError::Refused);
        }
        Ok((file, real))
    }
}

/// The real path of an open file, as the kernel knows it.
fn opened_path(file: &std::fs::File) -> Option<PathBuf> {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()
}

/// `p` resolved if it exists, else its lexical form.
fn resolve(p: &Path) -> PathBuf {
    p.canonicalize().unwrap_or_else(|_| lexical(p))
}

/// Absolute and without `.` and `..` (a `..` above the root stays at the root), symlinks left
/// alone.
fn lexical(p: &Path) -> PathBuf {
    let base = if p.is_absolute() {
        PathBuf::new()
    } else {
        std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"))
    };
    let mut out = base;
    for c in p.components() {
        match c {
            Component::Prefix(_) | Component::CurDir => {}
            Component::RootDir => out.push("/"),
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(data: &Path, dirs: &[&Path]) -> InputPolicy {
        let config = HubConfig {
            data: data.to_path_buf(),
            input_dirs: dirs.iter().map(|d| d.to_path_buf()).collect(),
            ..Default::default()
        };
        InputPolicy::new(&config)
    }

    #[test]
    fn only_regular_files_under_input_dirs_outside_the_hubs_own() {
        let root = tempfile::tempdir().unwrap();
        let media = root.path().join("media");
        let data = media.join("hub-data");
        std::fs::create_dir_all(data.join("pki")).unwrap();
        std::fs::write(data.join("pki/ca.key"), b"secret").unwrap();
        std::fs::write(media.join("a.wav"), b"RIFF").unwrap();
        std::fs::write(root.path().join("outside.wav"), b"RIFF").unwrap();
        std::os::unix::fs::symlink(root.path().join("outside.wav"), media.join("link.wav"))
            .unwrap();
        std::os::unix::fs::symlink(data.join("pki/ca.key"), media.join("key.wav")).unwrap();
        std::fs::hard_link(data.join("pki/ca.key"), media.join("hard.wav")).unwrap();
        let p = policy(&data, &[&media]);
        let s = |p: &Path| p.to_str().unwrap().to_string();

        let (_, real) = p.open(&s(&media.join("a.wav"))).unwrap();
        assert_eq!(real, media.join("a.wav").canonicalize().unwrap());
        let refused = |path: String| {
            assert!(
                matches!(p.open(&path), Err(InputError::Refused)),
                "{path} should be refused"
            )
        };
        refused(s(&root.path().join("outside.wav")));
        refused(s(&media.join("../outside.wav")));
        refused(s(&media.join("link.wav")));
        refused(s(&media.join("key.wav")));
        refused(s(&media.join("hard.wav")));
        refused(s(&data.join("pki/ca.key")));
        refused(s(&media)); // a directory
        refused(s(&root.path().join("nothing-here.wav")));
        refused("/etc/passwd".into());
        assert!(matches!(
            p.open(&s(&media.join("missing.wav"))),
            Err(InputError::NotFound)
        ));
        assert!(matches!(p.open("a.wav"), Err(InputError::NotAbsolute)));
        // No input directories: nothing is taken.
        let none = policy(&data, &[]);
        assert!(none.is_empty());
        assert!(matches!(
            none.open(&s(&media.join("a.wav"))),
            Err(InputError::Refused)
        ));
    }

    #[test]
    fn lexical_paths() {
        assert_eq!(lexical(Path::new("/a/./b/../c")), PathBuf::from("/a/c"));
        assert_eq!(lexical(Path::new("/../../etc")), PathBuf::from("/etc"));
    }
}
