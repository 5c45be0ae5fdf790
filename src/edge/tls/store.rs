//! What ACME leaves in the data dir, `<server.data_dir>/tls/` (mode 0700):
//!
//! - `account-<hash>.json`: the account's credentials (its key, PKCS#8) for one
//!   directory URL (`<hash>`: the first 16 hex digits of its SHA-256).
//! - `<domain>.crt.pem` and `<domain>.key.pem`: each domain's certificate chain in
//!   force and its key.
//!
//! Every file is mode 0600 and written whole: to a temporary file first, then renamed
//! over the old one, so a crash leaves the old file or the new one.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The ACME files under one directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// `<data_dir>/tls`, made (mode 0700) if missing.
    pub fn open(data_dir: &Path) -> io::Result<Store> {
        let dir = data_dir.join("tls");
        std::fs::create_dir_all(&dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(Store { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn account_path(&self, directory: &str) -> PathBuf {
        let hash = hex::encode(Sha256::digest(directory.as_bytes()));
        self.dir.join(format!("account-{}.json", &hash[..16]))
    }

    /// The credentials stored for `directory`, if any.
    pub fn account(&self, directory: &str) -> io::Result<Option<Vec<u8>>> {
        read_optional(&self.account_path(directory))
    }

    pub fn save_account(&self, directory: &str, json: &[u8]) -> io::Result<()> {
        write_private(&self.account_path(directory), json)
    }

    /// Forgets the account of `directory` (the CA no longer knows it); kept beside as
    /// `account-<hash>.json.gone` for the record.
    pub fn forget_account(&self, directory: &str) -> io::Result<()> {
        let path = self.account_path(directory);
        match std::fs::rename(&path, path.with_extension("json.gone")) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// The certificate and key files for a set of domains (named by the first).
    pub fn cert_paths(&self, domains: &[String]) -> (PathBuf, PathBuf) {
        Store::cert_paths_in(self.dir.parent().unwrap_or(&self.dir), domains)
    }

    /// [`Store::cert_paths`] of the store in `data_dir`, without making it.
    pub fn cert_paths_in(data_dir: &Path, domains: &[String]) -> (PathBuf, PathBuf) {
        let dir = data_dir.join("tls");
        let name = domains
            .first()
            .map_or("certificate".to_string(), |d| d.to_ascii_lowercase());
        (
            dir.join(format!("{name}.crt.pem")),
            dir.join(format!("{name}.key.pem")),
        )
    }

    /// Writes the key first, then the chain: a chain on disk always has its key.
    pub fn save_cert(
        &self,
        domains: &[String],
        chain_pem: &[u8],
        key_pem: &[u8],
    ) -> io::Result<()> {
        let (cert, key) = self.cert_paths(domains);
        write_private(&key, key_pem)?;
        write_private(&cert, chain_pem)
    }
}

fn read_optional(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes `bytes` to `path` with mode 0600, through a temporary file and a rename.
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&tmp)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_private_and_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let domains = vec!["example.com".to_string()];
        store.save_cert(&domains, b"chain", b"key").unwrap();
        store.save_cert(&domains, b"chain2", b"key2").unwrap();
        let (cert, key) = store.cert_paths(&domains);
        assert_eq!(std::fs::read(&cert).unwrap(), b"chain2");
        assert_eq!(std::fs::read(&key).unwrap(), b"key2");
        store.save_account("https://ca/dir", b"{}").unwrap();
        assert_eq!(store.account("https://ca/dir").unwrap().unwrap(), b"{}");
        assert!(store.account("https://other/dir").unwrap().is_none());
        use std::os::unix::fs::PermissionsExt;
        for entry in std::fs::read_dir(store.dir()).unwrap() {
            let mode = entry.unwrap().metadata().unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let mode = std::fs::metadata(store.dir()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
