//! Backup and restore of a gateway's configuration: users, rules, certificates and the audit log
//! (`config.sqlite`, the Kafka routes as they land there), the CA's certificate and key, and optionally the
//! journal. One file, encrypted with a passphrase because it holds the CA key.
//!
//! - **Consistent while the gateway runs**: each database is copied with `VACUUM INTO` (SQLite's online copy of a
//!   read snapshot), never by copying files under a writer.
//! - **The file**: `WEIRBACKUP\x01`, a 16-byte salt, an 8-byte nonce prefix, then chunks of at most 1 MiB, each
//!   sealed with AES-256-GCM under a key derived from the passphrase with argon2id; each chunk's nonce is the
//!   prefix and its number, and the last chunk says it is the last (so a truncated file is refused). Inside,
//!   named entries (`config.sqlite`, `pki/ca.crt`, `pki/ca.key`, `journal.sqlite`).
//! - **Restore** validates everything first (the passphrase, every chunk, the databases' integrity, the CA pair)
//!   and stages the files in `<data_dir>/restore/`; the gateway applies them at its next start
//!   ([`apply_staged`]), keeping what they replace in `<data_dir>/replaced-<time>/`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use super::OpsError;
use crate::files::{self, FileError, PRIVATE_FILE};
use crate::store::{self, CONFIG_FILE, JOURNAL_FILE};

const MAGIC: &[u8; 11] = b"WEIRBACKUP\x01";
const CHUNK: usize = 1 << 20;
const RESTORE_DIR: &str = "restore";
/// Written last into the staging directory: without it, a staged restore is incomplete and ignored.
const READY: &str = "READY";
/// The smallest passphrase accepted: the file holds the CA key.
const MIN_PASSPHRASE: usize = 12;

/// What a backup holds, as validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Entry names and sizes.
    pub entries: Vec<(String, u64)>,
    pub has_journal: bool,
    /// The CA's subject.
    pub ca: String,
}

/// Writes a backup of `data_dir` into `out` (the journal too if `with_journal`). Returns what it holds.
pub async fn create(
    data_dir: &Path,
    passphrase: &str,
    with_journal: bool,
    out: impl Write,
) -> Result<Manifest, OpsError> {
    if passphrase.chars().count() < MIN_PASSPHRASE {
        return Err(OpsError::Invalid(format!("the passphrase needs at least {MIN_PASSPHRASE} characters")));
    }
    // A gateway that has never needed its CA has none yet: the backup makes it, so that it can be restored.
    crate::security::server::load_or_create_ca(&data_dir.join("pki"))?;
    let work = WorkDir::new(data_dir)?;
    let mut names = vec![(CONFIG_FILE, store::Database::Config)];
    if with_journal {
        names.push((JOURNAL_FILE, store::Database::Journal));
    }
    for (name, database) in &names {
        snapshot(data_dir, *database, &work.path().join(name)).await?;
    }
    if with_journal {
        // The journal's larger payloads are in its payload log: the copy takes them into its rows.
        let copy = work.path().join(JOURNAL_FILE);
        let log = store::payload_log::dir_of(&data_dir.join(JOURNAL_FILE));
        let gone = tokio::task::spawn_blocking(move || store::payload_log::inline_into(&copy, &log))
            .await
            .map_err(|e| OpsError::Invalid(format!("copying the journal's payloads: {e}")))?
            .map_err(store::StoreError::from)?;
        if gone > 0 {
            tracing::info!(gone, "messages pruned while the backup was made are not in it");
        }
    }
    let mut sealer = Sealer::new(out, passphrase)?;
    let mut entries = Vec::new();
    for (name, _) in &names {
        entries.push(add_file(&mut sealer, name, &work.path().join(name))?);
    }
    for name in ["pki/ca.crt", "pki/ca.key"] {
        entries.push(add_file(&mut sealer, name, &data_dir.join(name))?);
    }
    sealer.write_all(&[0]).map_err(io(data_dir))?;
    sealer.finish().map_err(io(data_dir))?;
    let ca = std::fs::read_to_string(data_dir.join("pki/ca.crt")).map_err(io(data_dir))?;
    let ca = crate::pki::CertInfo::from_pem(&ca)?.subject;
    Ok(Manifest { entries, has_journal: with_journal, ca })
}

/// Checks a backup completely and stages it in `<data_dir>/restore/` for the next start. Nothing of the running
/// gateway changes. Returns what it holds.
pub async fn stage(data_dir: &Path, backup: impl Read, passphrase: &str) -> Result<Manifest, OpsError> {
    let staging = data_dir.join(RESTORE_DIR);
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io(&staging))?;
    }
    files::create_private_dir(&staging.join("pki"))?;
    let result = unpack(&staging, backup, passphrase).await;
    match result {
        Ok(manifest) => {
            files::write_atomic(&staging.join(READY), b"", PRIVATE_FILE)?;
            Ok(manifest)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            Err(e)
        }
    }
}

/// Whether a checked restore waits for the next start.
pub fn staged(data_dir: &Path) -> bool {
    data_dir.join(RESTORE_DIR).join(READY).exists()
}

/// At start-up, before the databases are opened: puts a staged restore in place, keeping the files it replaces
/// in `<data_dir>/replaced-<unix seconds>/`. Returns where they went, if a restore was applied.
pub fn apply_staged(data_dir: &Path) -> Result<Option<PathBuf>, FileError> {
    let staging = data_dir.join(RESTORE_DIR);
    if !staging.join(READY).exists() {
        return Ok(None);
    }
    let aside = data_dir.join(format!("replaced-{}", crate::timefmt::now_ms() / 1000));
    files::create_private_dir(&aside.join("pki"))?;
    let has_journal = staging.join(JOURNAL_FILE).exists();
    let mut moved: Vec<String> = vec![CONFIG_FILE.into()];
    if has_journal {
        moved.push(JOURNAL_FILE.into());
    }
    for db in moved.clone() {
        moved.push(format!("{db}-wal"));
        moved.push(format!("{db}-shm"));
    }
    if has_journal {
        // The replaced journal's payload log goes with it (the backup's journal holds its payloads in its rows).
        let log = store::payload_log::dir_of(Path::new(JOURNAL_FILE));
        moved.push(log.to_string_lossy().into_owned());
    }
    moved.extend(["pki/ca.crt", "pki/ca.key", "pki/server.crt", "pki/server.key"].map(String::from));
    for name in &moved {
        let from = data_dir.join(name);
        if from.exists() {
            std::fs::rename(&from, aside.join(name))
                .map_err(|source| FileError { path: from.clone(), source })?;
        }
    }
    files::create_private_dir(&data_dir.join("pki"))?;
    let mut restored = vec![CONFIG_FILE, "pki/ca.crt", "pki/ca.key"];
    if has_journal {
        restored.push(JOURNAL_FILE);
    }
    for name in restored {
        let from = staging.join(name);
        std::fs::rename(&from, data_dir.join(name))
            .map_err(|source| FileError { path: from.clone(), source })?;
    }
    std::fs::remove_dir_all(&staging).map_err(|source| FileError { path: staging.clone(), source })?;
    Ok(Some(aside))
}

/// A consistent copy of one database, made through SQLite while the gateway may be writing it.
async fn snapshot(data_dir: &Path, database: store::Database, to: &Path) -> Result<(), OpsError> {
    let pool = store::open_for_reading(data_dir, database).await?;
    let copied = sqlx::query("VACUUM INTO ?").bind(to.to_string_lossy().into_owned()).execute(&pool).await;
    pool.close().await;
    copied.map_err(store::StoreError::Query)?;
    Ok(())
}

fn add_file<W: Write>(sealer: &mut Sealer<W>, name: &str, path: &Path) -> Result<(String, u64), OpsError> {
    let mut file = std::fs::File::open(path).map_err(io(path))?;
    let size = file.metadata().map_err(io(path))?.len();
    let name_bytes = name.as_bytes();
    let header = [
        &[1u8][..],
        &u16::try_from(name_bytes.len()).unwrap_or(u16::MAX).to_be_bytes(),
        name_bytes,
        &size.to_be_bytes(),
    ]
    .concat();
    sealer.write_all(&header).map_err(io(path))?;
    let copied = std::io::copy(&mut file, sealer).map_err(io(path))?;
    if copied != size {
        return Err(OpsError::Invalid(format!("{} changed while it was read", path.display())));
    }
    Ok((name.to_owned(), size))
}

/// Decrypts and checks every entry into `staging`.
async fn unpack(staging: &Path, backup: impl Read, passphrase: &str) -> Result<Manifest, OpsError> {
    let mut reader = Opener::new(backup, passphrase)?;
    let mut entries = Vec::new();
    loop {
        let mut kind = [0u8; 1];
        reader.read_exact(&mut kind).map_err(bad)?;
        if kind[0] == 0 {
            break;
        }
        let mut len = [0u8; 2];
        reader.read_exact(&mut len).map_err(bad)?;
        let mut name = vec![0u8; usize::from(u16::from_be_bytes(len))];
        reader.read_exact(&mut name).map_err(bad)?;
        let name =
            String::from_utf8(name).map_err(|_| OpsError::Invalid("a backup entry has a bad name".into()))?;
        if ![CONFIG_FILE, JOURNAL_FILE, "pki/ca.crt", "pki/ca.key"].contains(&name.as_str()) {
            return Err(OpsError::Invalid(format!("unexpected entry {name:?} in the backup")));
        }
        let mut size = [0u8; 8];
        reader.read_exact(&mut size).map_err(bad)?;
        let size = u64::from_be_bytes(size);
        let path = staging.join(&name);
        let mut file =
            std::fs::OpenOptions::new().write(true).create_new(true).open(&path).map_err(io(&path))?;
        let copied = std::io::copy(&mut (&mut reader).take(size), &mut file).map_err(bad)?;
        if copied != size {
            return Err(OpsError::Invalid("the backup is truncated".into()));
        }
        file.sync_all().map_err(io(&path))?;
        entries.push((name, size));
    }
    reader.expect_end()?;
    let has = |name: &str| entries.iter().any(|(n, _)| n == name);
    for required in [CONFIG_FILE, "pki/ca.crt", "pki/ca.key"] {
        if !has(required) {
            return Err(OpsError::Invalid(format!("the backup has no {required}")));
        }
    }
    for (name, database) in [(CONFIG_FILE, store::Database::Config), (JOURNAL_FILE, store::Database::Journal)]
    {
        if has(name) {
            check_database(staging, database).await?;
        }
    }
    let read = |name: &str| std::fs::read_to_string(staging.join(name)).map_err(io(&staging.join(name)));
    let ca = crate::pki::CertificateAuthority::from_pem(&read("pki/ca.crt")?, &read("pki/ca.key")?)?;
    Ok(Manifest { has_journal: has(JOURNAL_FILE), entries, ca: ca.info().subject.clone() })
}

async fn check_database(dir: &Path, database: store::Database) -> Result<(), OpsError> {
    let pool = store::open_for_reading(dir, database).await?;
    let check: Result<String, sqlx::Error> =
        sqlx::query_scalar("PRAGMA integrity_check").fetch_one(&pool).await;
    pool.close().await;
    match check {
        Ok(ok) if ok == "ok" => Ok(()),
        Ok(problem) => Err(OpsError::Invalid(format!("a database in the backup is damaged: {problem}"))),
        Err(e) => Err(OpsError::Invalid(format!("a database in the backup cannot be read: {e}"))),
    }
}

fn key(passphrase: &str, salt: &[u8]) -> Result<LessSafeKey, OpsError> {
    let mut key = [0u8; 32];
    argon2::Argon2::default()
        .hash_password_into(passphrase.as_bytes(), salt, &mut key)
        .map_err(|e| OpsError::Invalid(format!("key derivation: {e}")))?;
    let unbound =
        UnboundKey::new(&AES_256_GCM, &key).map_err(|_| OpsError::Invalid("key setup failed".into()))?;
    Ok(LessSafeKey::new(unbound))
}

fn nonce(prefix: &[u8; 8], counter: u32) -> Nonce {
    let mut bytes = [0u8; 12];
    for (to, from) in bytes.iter_mut().zip(prefix.iter().chain(&counter.to_be_bytes())) {
        *to = *from;
    }
    Nonce::assume_unique_for_key(bytes)
}

/// A private scratch directory in the data directory (same file system, never world-readable), removed when
/// dropped.
struct WorkDir(PathBuf);

impl WorkDir {
    fn new(data_dir: &Path) -> Result<WorkDir, OpsError> {
        let path = data_dir.join(format!(".backup-{}-{}", std::process::id(), crate::timefmt::now_ms()));
        files::create_private_dir(&path)?;
        Ok(WorkDir(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Encrypts what is written to it, chunk by chunk.
struct Sealer<W: Write> {
    out: W,
    key: LessSafeKey,
    prefix: [u8; 8],
    counter: u32,
    buffer: Vec<u8>,
}

impl<W: Write> Sealer<W> {
    fn new(mut out: W, passphrase: &str) -> Result<Sealer<W>, OpsError> {
        let random = SystemRandom::new();
        let (mut salt, mut prefix) = ([0u8; 16], [0u8; 8]);
        random
            .fill(&mut salt)
            .and_then(|()| random.fill(&mut prefix))
            .map_err(|_| OpsError::Invalid("no randomness".into()))?;
        let key = key(passphrase, &salt)?;
        let header = [&MAGIC[..], &salt, &prefix].concat();
        out.write_all(&header).map_err(|e| OpsError::Invalid(format!("writing the backup: {e}")))?;
        Ok(Sealer { out, key, prefix, counter: 0, buffer: Vec::with_capacity(CHUNK) })
    }

    fn seal(&mut self, last: bool) -> std::io::Result<()> {
        let mut chunk = std::mem::take(&mut self.buffer);
        let aad = Aad::from([u8::from(last)]);
        self.key
            .seal_in_place_append_tag(nonce(&self.prefix, self.counter), aad, &mut chunk)
            .map_err(|_| std::io::Error::other("encryption failed"))?;
        self.counter =
            self.counter.checked_add(1).ok_or_else(|| std::io::Error::other("backup too large"))?;
        self.out.write_all(&u32::try_from(chunk.len()).unwrap_or(u32::MAX).to_be_bytes())?;
        self.out.write_all(&chunk)?;
        chunk.clear();
        self.buffer = chunk;
        Ok(())
    }

    fn finish(mut self) -> std::io::Result<()> {
        self.seal(true)?;
        self.out.flush()
    }
}

impl<W: Write> Write for Sealer<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let room = CHUNK - self.buffer.len();
        let n = bytes.len().min(room);
        self.buffer.extend_from_slice(bytes.get(..n).unwrap_or_default());
        if self.buffer.len() == CHUNK {
            self.seal(false)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Decrypts a backup, checking each chunk and that the last one came.
struct Opener<R: Read> {
    input: R,
    key: LessSafeKey,
    prefix: [u8; 8],
    counter: u32,
    plain: Vec<u8>,
    at: usize,
    ended: bool,
}

impl<R: Read> Opener<R> {
    fn new(mut input: R, passphrase: &str) -> Result<Opener<R>, OpsError> {
        let mut header = [0u8; 11 + 16 + 8];
        input.read_exact(&mut header).map_err(|_| OpsError::Invalid("this is not a Weir backup".into()))?;
        if header.get(..11) != Some(&MAGIC[..]) {
            return Err(OpsError::Invalid("this is not a Weir backup".into()));
        }
        let salt = header.get(11..27).unwrap_or_default();
        let mut prefix = [0u8; 8];
        prefix.copy_from_slice(header.get(27..35).unwrap_or(&[0; 8]));
        Ok(Opener {
            key: key(passphrase, salt)?,
            input,
            prefix,
            counter: 0,
            plain: Vec::new(),
            at: 0,
            ended: false,
        })
    }

    fn next_chunk(&mut self) -> std::io::Result<bool> {
        if self.ended {
            return Ok(false);
        }
        let mut len = [0u8; 4];
        self.input.read_exact(&mut len).map_err(|_| invalid("the backup is truncated"))?;
        let len = usize::try_from(u32::from_be_bytes(len)).unwrap_or(usize::MAX);
        if len > CHUNK + 16 {
            return Err(invalid("the backup is damaged"));
        }
        let mut chunk = vec![0u8; len];
        self.input.read_exact(&mut chunk).map_err(|_| invalid("the backup is truncated"))?;
        let nonce = || nonce(&self.prefix, self.counter);
        let (plain_len, last) = match self.key.open_in_place(nonce(), Aad::from([0u8]), &mut chunk.clone()) {
            Ok(plain) => (plain.len(), false),
            Err(_) => match self.key.open_in_place(nonce(), Aad::from([1u8]), &mut chunk) {
                Ok(plain) => (plain.len(), true),
                Err(_) => return Err(invalid("wrong passphrase, or the backup is damaged")),
            },
        };
        chunk.truncate(plain_len);
        self.plain = chunk;
        self.at = 0;
        self.counter += 1;
        self.ended = last;
        Ok(true)
    }

    /// After the end entry: nothing may follow, and the last chunk must have come.
    fn expect_end(&mut self) -> Result<(), OpsError> {
        if self.at < self.plain.len() || !self.ended {
            return Err(OpsError::Invalid(
                "the backup is damaged: data after its end, or its end is missing".into(),
            ));
        }
        let mut more = [0u8; 1];
        match self.input.read(&mut more) {
            Ok(0) => Ok(()),
            _ => Err(OpsError::Invalid("the backup is damaged: data after its end".into())),
        }
    }
}

impl<R: Read> Read for Opener<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.plain.len() {
            if !self.next_chunk()? {
                return Ok(0);
            }
        }
        let available = self.plain.get(self.at..).unwrap_or_default();
        let n = available.len().min(out.len());
        out.get_mut(..n).unwrap_or_default().copy_from_slice(available.get(..n).unwrap_or_default());
        self.at += n;
        Ok(n)
    }
}

fn invalid(why: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_owned())
}

fn bad(e: std::io::Error) -> OpsError {
    if e.kind() == std::io::ErrorKind::InvalidData {
        OpsError::Invalid(e.to_string())
    } else {
        OpsError::Invalid(format!("the backup is truncated or unreadable: {e}"))
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> OpsError + '_ {
    move |source| OpsError::File(FileError { path: path.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{Actor, Ops};

    #[tokio::test]
    async fn a_backup_restores_users_rules_certificates_and_the_ca_and_refuses_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let ops = Ops::open(&data).await.unwrap();
        ops.add_user("alice", "correct horse battery", &["admin".into()], &Actor::new("test")).await.unwrap();
        let ca_before = ops.ca_pem().unwrap();
        let mut file = Vec::new();
        let manifest = create(&data, "a long passphrase", false, &mut file).await.unwrap();
        assert!(!manifest.has_journal && manifest.entries.len() == 3);
        assert!(!String::from_utf8_lossy(&file).contains("PRIVATE KEY"), "encrypted");

        // Wrong passphrase, a truncated file, a flipped byte, a file that is no backup: refused, nothing staged.
        let refused = [
            (file.clone(), "another passphrase"),
            (file[..file.len() - 10].to_vec(), "a long passphrase"),
            (
                {
                    let mut f = file.clone();
                    let i = f.len() / 2;
                    f[i] ^= 1;
                    f
                },
                "a long passphrase",
            ),
            (b"hello".to_vec(), "a long passphrase"),
        ];
        for (bytes, passphrase) in refused {
            assert!(stage(&data, bytes.as_slice(), passphrase).await.is_err());
            assert!(!data.join(RESTORE_DIR).exists(), "nothing staged");
        }
        assert!(create(&data, "short", false, Vec::new()).await.is_err(), "a short passphrase is refused");

        // Changes after the backup are undone by the restore, at the next start.
        ops.delete_user("alice", &Actor::new("test")).await.unwrap();
        let staged = stage(&data, file.as_slice(), "a long passphrase").await.unwrap();
        assert_eq!(staged.ca, manifest.ca);
        drop(ops);
        let aside = apply_staged(&data).unwrap().expect("applied");
        assert!(aside.join(CONFIG_FILE).exists(), "the replaced configuration is kept");
        assert!(apply_staged(&data).unwrap().is_none(), "applied once");
        let ops = Ops::open(&data).await.unwrap();
        assert_eq!(ops.list_users().await.unwrap().len(), 1, "alice is back");
        assert_eq!(ops.ca_pem().unwrap(), ca_before);
    }
}
