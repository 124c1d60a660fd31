//! File destination: each document is written as `<dir>/<local_id>.json`
//! (with `payload = "original"`: the message as received, `<local_id>.hl7`).
//!
//! The write is atomic: the document goes to a hidden temporary file in the
//! same folder (`.<local_id>.json.<random>.tmp`), which is fsynced, renamed
//! over the final name, and then the folder is fsynced so the rename itself
//! survives a crash. A reader polling the folder for `*.json` therefore never
//! sees half a document. The folder is created (with its parents) when
//! missing.
//!
//! It does not rotate, clean up or index the folder, and it does not look
//! inside the document: the file holds exactly the bytes queued.
//!
//! # Invariants
//! - The file content is byte-identical to `DeliveryItem::document` (or,
//!   `payload = "original"`, to `DeliveryItem::raw`).
//! - Delivering the same item again writes the same name again (the name
//!   comes from the queue row id), so a repeat after a crash overwrites
//!   rather than duplicates.
//! - I/O errors (disk full, permissions, a missing mount) are retryable: the
//!   document is not at fault, the folder can be fixed. They name the path.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use super::{Deliver, Delivered, DeliveryError, DeliveryItem, Payload};

/// Writes documents into one folder.
#[derive(Debug)]
pub struct FileDestination {
    id: String,
    dir: PathBuf,
    timeout: Duration,
    payload: Payload,
}

impl FileDestination {
    /// A destination writing into `dir`; `timeout` bounds one write (a hung
    /// network mount gives a retryable error instead of a stuck delivery).
    pub fn new(id: &str, dir: PathBuf, timeout: Duration) -> Self {
        FileDestination {
            id: id.to_string(),
            dir,
            timeout,
            payload: Payload::Document,
        }
    }

    /// What it writes: the document (default) or the original message.
    pub fn with_payload(mut self, payload: Payload) -> Self {
        self.payload = payload;
        self
    }

    /// The folder documents are written into.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Deliver for FileDestination {
    fn deliver<'a>(
        &'a self,
        item: &'a DeliveryItem,
    ) -> BoxFuture<'a, Result<Delivered, DeliveryError>> {
        async move {
            let dir = self.dir.clone();
            let name = format!("{}.{}", item.local_id(), self.payload.extension());
            let document = self.payload.bytes(item).clone();
            let write = tokio::task::spawn_blocking(move || write_atomically(&dir, &name, &document));
            let path = match tokio::time::timeout(self.timeout, write).await {
                Err(_) => {
                    return Err(DeliveryError::retry(format!(
                        "destination `{}`: writing into {} did not finish within {} s",
                        self.id,
                        self.dir.display(),
                        self.timeout.as_secs()
                    )))
                }
                Ok(Err(join)) => {
                    return Err(DeliveryError::retry(format!(
                        "destination `{}`: the file write task failed: {join}",
                        self.id
                    )))
                }
                Ok(Ok(Err(err))) => {
                    return Err(DeliveryError::retry(format!(
                        "destination `{}`: {err}",
                        self.id
                    )))
                }
                Ok(Ok(Ok(path))) => path,
            };
            tracing::debug!(destination = %self.id, path = %path.display(), bytes = item.document.len(), "document written");
            Ok(Delivered {
                remote_ref: Some(path.display().to_string()),
            })
        }
        .boxed()
    }
}

/// Writes `bytes` as `dir/name` atomically and durably; returns the final path.
fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf, String> {
    fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create the folder {}: {e}", dir.display()))?;
    let target = dir.join(name);
    let temp = dir.join(format!(".{name}.{:016x}.tmp", fastrand::u64(..)));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(|e| format!("cannot create {}: {e}", temp.display()))?;
        file.write_all(bytes)
            .map_err(|e| format!("cannot write {}: {e}", temp.display()))?;
        file.sync_all()
            .map_err(|e| format!("cannot fsync {}: {e}", temp.display()))?;
        drop(file);
        fs::rename(&temp, &target).map_err(|e| {
            format!(
                "cannot rename {} to {}: {e}",
                temp.display(),
                target.display()
            )
        })
    })();
    if let Err(err) = result {
        // Best effort: do not leave temporary files behind on failure.
        let _ = fs::remove_file(&temp);
        return Err(err);
    }
    // The rename is durable only once the folder's entry is on disk.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("cannot fsync the folder {}: {e}", dir.display()))?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_overwrites_without_leaving_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("a/b");
        let path = write_atomically(&sub, "junction-1.json", b"{\"x\":1}").unwrap();
        assert_eq!(path, sub.join("junction-1.json"));
        assert_eq!(fs::read(&path).unwrap(), b"{\"x\":1}");
        write_atomically(&sub, "junction-1.json", b"{}").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"{}");
        let names: Vec<_> = fs::read_dir(&sub)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("junction-1.json")]);
    }

    #[test]
    fn a_folder_that_cannot_be_made_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        fs::write(&blocker, b"x").unwrap();
        let err = write_atomically(&blocker.join("sub"), "n.json", b"{}").unwrap_err();
        assert!(err.contains("cannot create the folder"), "{err}");
        assert!(err.contains("sub"), "{err}");
    }
}
