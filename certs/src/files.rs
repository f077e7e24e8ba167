//! Writing CA files: refuse to overwrite unless forced, keys mode 0600,
//! each file written to a temporary name and renamed into place so that a
//! crash never leaves half a key.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::CaError;

/// Who may read a file we write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Certificates, CRLs, state: mode 0644.
    Public,
    /// Private keys: mode 0600.
    Private,
}

/// Fail with [`CaError::Exists`] if any path exists and `force` is not set.
pub(crate) fn ensure_absent(paths: &[&Path], force: bool) -> Result<(), CaError> {
    if force {
        return Ok(());
    }
    for path in paths {
        if path.exists() {
            return Err(CaError::Exists {
                path: path.to_path_buf(),
            });
        }
    }
    Ok(())
}

/// Create `dir` (and parents) if missing; a new private directory gets mode 0700.
pub(crate) fn create_dir(dir: &Path, access: Access) -> Result<(), CaError> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    if access == Access::Private {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    #[cfg(not(unix))]
    let _ = access;
    builder.create(dir).map_err(|source| CaError::Io {
        action: "create directory",
        path: dir.to_path_buf(),
        source,
    })
}

/// Write `contents` to `path` atomically (temporary file + rename), replacing
/// any existing file. Callers check [`ensure_absent`] first.
pub(crate) fn write_file(path: &Path, contents: &[u8], access: Access) -> Result<(), CaError> {
    let io_err = |action, path: &Path| {
        let path = path.to_path_buf();
        move |source| CaError::Io {
            action,
            path,
            source,
        }
    };
    let tmp = temp_path(path);
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(match access {
            Access::Public => 0o644,
            Access::Private => 0o600,
        });
    }
    #[cfg(not(unix))]
    let _ = access;
    let result = options
        .open(&tmp)
        .map_err(io_err("create", &tmp))
        .and_then(|mut file| {
            file.write_all(contents)
                .and_then(|()| file.sync_all())
                .map_err(io_err("write", &tmp))
        })
        .and_then(|()| fs::rename(&tmp, path).map_err(io_err("write", path)));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Read a whole file, naming it in the error.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, CaError> {
    fs::read(path).map_err(|source| CaError::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    })
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_to_overwrite_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.pem");
        ensure_absent(&[&path], false).unwrap();
        write_file(&path, b"one", Access::Public).unwrap();
        assert!(matches!(
            ensure_absent(&[&path], false),
            Err(CaError::Exists { .. })
        ));
        ensure_absent(&[&path], true).unwrap();
        write_file(&path, b"two", Access::Public).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn private_files_are_0600_even_when_replacing() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        fs::write(&path, b"old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        write_file(&path, b"secret", Access::Private).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[cfg(unix)]
    #[test]
    fn new_private_dir_is_0700() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("nested/ca");
        create_dir(&ca, Access::Private).unwrap();
        let mode = fs::metadata(&ca).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }
}
