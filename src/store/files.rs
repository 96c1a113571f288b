//! The store's files: opening redb (quarantining a corrupt file), the sequence floor file, and
//! the modes of the state directory and its files.

use super::*;

/// `base`, or `base-2`, `base-3`, … whichever does not exist yet under `dir`.
pub(super) fn free_name(dir: &Path, base: &str) -> PathBuf {
    let mut path = dir.join(base);
    let mut n = 1;
    while path.exists() {
        n += 1;
        path = dir.join(format!("{base}-{n}"));
    }
    path
}

pub(super) fn open_redb(file: &Path) -> Result<redb::Database, OpenFailure> {
    // redb reports corruption as an error, but a damaged file might also make it panic; both
    // mean the same thing here: this store cannot be read.
    let opened = std::panic::catch_unwind(|| {
        let db = redb::Builder::new()
            .set_cache_size(CACHE_SIZE)
            .set_repair_callback(|session| {
                if session.progress() == 0.0 {
                    t::StoreNotClosedCleanly {}.emit();
                }
            })
            .create(file)?;
        // Create every table, and touch each one's ends so damage in the index shows now.
        let txn = db.begin_write()?;
        {
            let t = txn.open_table(EVENTS)?;
            t.first()?;
            t.last()?;
            txn.open_table(PENDING)?.first()?;
            txn.open_table(STATUS)?.first()?;
            txn.open_table(ATTEMPTS)?.first()?;
            txn.open_table(RECORDS)?.first()?;
            txn.open_table(KEPT)?.first()?;
        }
        txn.commit()?;
        Ok::<_, redb::Error>(db)
    });
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) => match e {
            redb::Error::Corrupted(reason) => Err(OpenFailure::Corrupt(reason)),
            redb::Error::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => {
                Err(OpenFailure::Corrupt(io.to_string()))
            }
            redb::Error::TableTypeMismatch { .. } | redb::Error::TypeDefinitionChanged { .. } => {
                Err(OpenFailure::Corrupt(e.to_string()))
            }
            // Already open, an older file format, an I/O failure: moving the file aside would
            // lose its events, so refuse loudly instead.
            other => Err(OpenFailure::Other(StoreError::Redb(other))),
        },
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "redb panicked while opening".into());
            Err(OpenFailure::Corrupt(what))
        }
    }
}

pub(super) fn read_floor(path: &Path) -> Result<u64, StoreError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text.trim().parse().unwrap_or_else(|_| {
            t::SequenceFloorUnreadable {
                path: &path.display(),
            }
            .emit();
            0
        })),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(source) => Err(StoreError::File {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Writes the floor atomically (temp file, fsync, rename, fsync of the directory) so a crash
/// or a power cut leaves the old value or the new one.
pub(crate) fn write_floor(path: &Path, value: u64) -> Result<(), StoreError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let io = |source| StoreError::File {
        path: path.to_owned(),
        source,
    };
    let mut f = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?
    };
    f.write_all(format!("{value}\n").as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Makes a directory of the store 0700 whatever the umask (it holds hashes of PINs and
/// tokens); one that others could read is tightened, and that is logged.
pub(super) fn private_dir(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |source| StoreError::File {
        path: dir.to_owned(),
        source,
    };
    let mode = std::fs::metadata(dir).map_err(io)?.permissions().mode() & 0o777;
    if mode != 0o700 {
        if mode & 0o077 != 0 {
            t::StateDirTightened {
                path: &dir.display(),
                mode: &format!("{mode:o}"),
            }
            .emit();
        }
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    }
    Ok(())
}

/// Creates the store's file 0600 (or tightens an existing one to it) before redb opens it.
pub(super) fn private_file(file: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |source| StoreError::File {
        path: file.to_owned(),
        source,
    };
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(file)
        .map_err(io)?;
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600)).map_err(io)
}

/// fsyncs a directory, so that a file created or renamed in it survives a power cut.
pub(super) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    let io = |source| StoreError::File {
        path: dir.to_owned(),
        source,
    };
    std::fs::File::open(dir).map_err(io)?.sync_all().map_err(io)
}
