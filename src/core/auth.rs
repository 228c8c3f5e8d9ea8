//! Passwords (Argon2id) and login tokens (HS256 JWTs, the shape the original server issued).
//!
//! Hashing is CPU- and memory-heavy (~19 MiB, tens of ms), so it runs on the blocking pool
//! behind a semaphore: a login storm queues instead of exhausting memory or stalling the runtime.
//!
//! The ~19 MiB of Argon2 blocks are not allocated per hash: the semaphore admits at most
//! `hash_concurrency` hashes at once, and each takes a block buffer from a pool that never
//! holds more than that many ([`BlockPool`]). Allocated per hash, freed blocks stayed with
//! the allocator's arenas after a burst (1 300 failed logins took RSS from 306 MB to ~1 GB).

use std::path::Path;
use std::sync::{Arc, Mutex};

use argon2::password_hash::{rand_core::OsRng, Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::sync::Semaphore;

use super::model::{Jti, TokenId, User, UserId};

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the token is malformed")]
    Malformed,
    #[error("the token's signature is invalid (issued by another cluster, or the secret changed)")]
    BadSignature,
    #[error("the token has expired: log in with your password")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
}

/// Why hashing or checking a password could not be done (never "wrong password": that is a
/// `false` from [`Auth::verify_password`]).
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// The hashing pool was closed (the node is shutting down).
    #[error("the password hashing pool is closed")]
    PoolClosed(#[from] tokio::sync::AcquireError),
    /// The blocking task that hashes panicked or was cancelled.
    #[error("the password hashing task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// Argon2 refused the input.
    #[error("password hashing failed: {0}")]
    Argon2(String),
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read the token secret {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot create the token secret {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("the token secret {path} is shorter than 16 bytes: use at least 32 random bytes")]
    TooShort { path: String },
    /// Anyone who can read the secret can forge a login token for every user.
    #[error("the token secret {path} can be read by other users (mode {mode:04o}): run `chmod 600 {path}` (owned by the user chat-zinx runs as), then start again")]
    TooOpen { path: String, mode: u32 },
}

/// Claims of a login token: the original's payload keys.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub id: UserId,
    pub user_uuid: String,
    pub username: String,
    pub exp: i64,
    pub iss: String,
    pub nbf: i64,
    /// The token's own id, so that a logout can revoke this token and no other. Tokens
    /// issued before it existed have none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub jti: String,
}

impl Claims {
    /// What a revocation records of this token.
    pub fn token_id(&self) -> TokenId {
        TokenId {
            jti: Jti::from_claim(&self.jti),
            issued: self.nbf,
            expires: self.exp,
        }
    }
}

const ISSUER: &str = "chat-zinx";

pub struct Auth {
    secret: Vec<u8>,
    token_ttl_s: i64,
    hashing: Arc<Semaphore>,
    blocks: Arc<BlockPool>,
}

/// Argon2 block buffers, reused: at most one per hash running at once.
#[derive(Default)]
pub struct BlockPool {
    free: Mutex<Vec<Vec<Block>>>,
}

impl BlockPool {
    /// Runs `f` with at least `n` blocks (a pooled buffer when one is big enough).
    fn with<R>(&self, n: usize, f: impl FnOnce(&mut [Block]) -> R) -> R {
        let pooled = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut blocks = match pooled {
            Some(b) if b.len() >= n => b,
            _ => vec![Block::default(); n],
        };
        let result = f(&mut blocks[..n]);
        self.free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(blocks);
        result
    }

    /// Buffers kept (for tests).
    pub fn buffers(&self) -> usize {
        self.free.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// An Argon2id hash of `password` in PHC form, with the default parameters, using `blocks`.
fn hash_with(blocks: &BlockPool, password: &[u8]) -> Result<String, String> {
    let params = Params::default();
    let salt = SaltString::generate(&mut OsRng);
    let mut salt_buf = [0u8; 64];
    let salt_bytes = salt.decode_b64(&mut salt_buf).map_err(|e| e.to_string())?;
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    blocks
        .with(params.block_count(), |b| {
            argon.hash_password_into_with_memory(password, salt_bytes, &mut out, b)
        })
        .map_err(|e| e.to_string())?;
    let phc = PasswordHash {
        algorithm: argon2::ARGON2ID_IDENT,
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(|e| e.to_string())?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).map_err(|e| e.to_string())?),
    };
    Ok(phc.to_string())
}

/// Whether `password` matches the PHC string `hash` (any Argon2 variant and parameters),
/// using `blocks`; false for an unreadable hash. The comparison is constant-time.
fn verify_with(blocks: &BlockPool, password: &[u8], hash: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let (Some(expected), Some(salt)) = (parsed.hash, parsed.salt) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(parsed.algorithm) else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from) {
        None => Version::V0x13,
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let Ok(params) = Params::try_from(&parsed) else {
        return false;
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt_bytes) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let argon = Argon2::new(algorithm, version, params.clone());
    let mut out = vec![0u8; expected.len()];
    let done = blocks.with(params.block_count(), |b| {
        argon.hash_password_into_with_memory(password, salt_bytes, &mut out, b)
    });
    done.is_ok() && Output::new(&out).is_ok_and(|o| o == expected)
}

impl Auth {
    pub fn new(secret: Vec<u8>, token_ttl: std::time::Duration, hash_concurrency: usize) -> Self {
        Auth {
            secret,
            token_ttl_s: token_ttl.as_secs() as i64,
            hashing: Arc::new(Semaphore::new(hash_concurrency.max(1))),
            blocks: Arc::new(BlockPool::default()),
        }
    }

    /// A new token secret: 32 random bytes, hex.
    pub fn generate_secret() -> Vec<u8> {
        hex::encode(rand::random::<[u8; 32]>()).into_bytes()
    }

    /// Reads the secret from `path`, creating it ([`Auth::generate_secret`], mode 0600) if
    /// missing. The file appears whole (written aside, then linked): nodes sharing a missing
    /// file all end up with the one that was created first. Every node of a cluster must share
    /// the secret for tokens to work on any node.
    pub fn load_or_create_secret(path: &Path) -> Result<Vec<u8>, SecretError> {
        let shown = path.display().to_string();
        match std::fs::read(path) {
            Ok(bytes) => {
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    let mode = std::fs::metadata(path)
                        .map_err(|source| SecretError::Read {
                            path: shown.clone(),
                            source,
                        })?
                        .permissions()
                        .mode();
                    if mode & 0o077 != 0 {
                        return Err(SecretError::TooOpen {
                            path: shown,
                            mode: mode & 0o7777,
                        });
                    }
                }
                let trimmed: Vec<u8> = bytes
                    .into_iter()
                    .rev()
                    .skip_while(|b| b.is_ascii_whitespace())
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                if trimmed.len() < 16 {
                    return Err(SecretError::TooShort { path: shown });
                }
                Ok(trimmed)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let secret = Self::generate_secret();
                match write_private(path, &secret) {
                    Ok(()) => Ok(secret),
                    // Another node sharing the file created it first: use theirs.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        Self::load_or_create_secret(path)
                    }
                    Err(source) => Err(SecretError::Write {
                        path: shown,
                        source,
                    }),
                }
            }
            Err(source) => Err(SecretError::Read {
                path: shown,
                source,
            }),
        }
    }

    /// Argon2id hash of a password, computed on the blocking pool.
    pub async fn hash_password(&self, password: String) -> Result<String, HashError> {
        let _permit = self.hashing.clone().acquire_owned().await?;
        let blocks = self.blocks.clone();
        let hash = tokio::task::spawn_blocking(move || hash_with(&blocks, password.as_bytes()))
            .await?
            .map_err(HashError::Argon2)?;
        Ok(hash)
    }

    /// The same work as checking a password against a real hash, for a user that does not
    /// exist: an unknown name must not answer faster than a wrong password.
    pub async fn verify_nobody(&self, password: String) -> Result<(), HashError> {
        static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let hash = match DUMMY.get() {
            Some(h) => h.clone(),
            None => {
                let h = self.hash_password("not anyone's password".into()).await?;
                DUMMY.get_or_init(|| h).clone()
            }
        };
        self.verify_password(password, hash).await.map(|_| ())
    }

    /// Whether `password` matches the stored hash (false for an unreadable hash).
    pub async fn verify_password(&self, password: String, hash: String) -> Result<bool, HashError> {
        let _permit = self.hashing.clone().acquire_owned().await?;
        let blocks = self.blocks.clone();
        Ok(
            tokio::task::spawn_blocking(move || verify_with(&blocks, password.as_bytes(), &hash))
                .await?,
        )
    }

    /// A signed token for `user`, valid from `now` (Unix seconds) for the configured lifetime.
    pub fn issue_token(&self, user: &User, now: i64) -> String {
        self.issue(user, now).0
    }

    /// A signed token for `user` and what identifies it for a revocation.
    pub fn issue(&self, user: &User, now: i64) -> (String, TokenId) {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let claims = Claims {
            id: user.id,
            user_uuid: user.uuid.clone(),
            username: user.username.clone(),
            exp: now + self.token_ttl_s,
            iss: ISSUER.into(),
            nbf: now,
            jti: hex::encode(rand::random::<[u8; 16]>()),
        };
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("claims encode"));
        let signing_input = format!("{header}.{payload}");
        let sig = URL_SAFE_NO_PAD.encode(self.sign(signing_input.as_bytes()));
        (format!("{signing_input}.{sig}"), claims.token_id())
    }

    /// The claims of a token this cluster issued, if it is valid at `now` (Unix seconds).
    pub fn verify_token(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let sig = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| TokenError::Malformed)?;
        let mut mac = self.mac();
        mac.update(header.as_bytes());
        mac.update(b".");
        mac.update(payload.as_bytes());
        mac.verify_slice(&sig)
            .map_err(|_| TokenError::BadSignature)?;
        let claims: Claims = URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|p| serde_json::from_slice(&p).ok())
            .ok_or(TokenError::Malformed)?;
        if claims.iss != ISSUER {
            return Err(TokenError::BadSignature);
        }
        if now >= claims.exp {
            return Err(TokenError::Expired);
        }
        if now < claims.nbf - 60 {
            return Err(TokenError::NotYetValid);
        }
        Ok(claims)
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes any key length")
    }

    fn sign(&self, input: &[u8]) -> Vec<u8> {
        let mut mac = self.mac();
        mac.update(input);
        mac.finalize().into_bytes().to_vec()
    }
}

/// Creates `path` holding `data` (mode 0600) atomically: the data is written and synced to a
/// temporary file beside it, which is then hard-linked to `path`. A reader never sees a partial
/// file, and when another process created `path` first the link fails with `AlreadyExists`
/// (a rename would silently replace theirs, and the two would sign with different secrets).
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        hex::encode(rand::random::<[u8; 8]>())
    ));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let written = (|| {
        let mut f = opts.open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::hard_link(&tmp, path)
    })();
    // The temporary name goes in every case; `path`, when linked, stays.
    let _ = std::fs::remove_file(&tmp);
    written?;
    // The new directory entry survives a crash too.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn pooled_hashes_are_standard_argon2id_and_check_standard_ones() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let pool = BlockPool::default();
        let ours = hash_with(&pool, b"correct horse").unwrap();
        assert!(
            ours.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{ours}"
        );
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(Argon2::default()
            .verify_password(b"correct horse", &parsed)
            .is_ok());
        let salt = SaltString::generate(&mut OsRng);
        let theirs = Argon2::default()
            .hash_password(b"battery staple", &salt)
            .unwrap()
            .to_string();
        assert!(verify_with(&pool, b"battery staple", &theirs));
        assert!(!verify_with(&pool, b"battery stapler", &theirs));
        assert!(!verify_with(&pool, b"correct horse", "not a hash"));
        assert_eq!(pool.buffers(), 1, "one buffer, reused");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_hashes_keeps_at_most_one_buffer_per_concurrent_hash() {
        let auth = Arc::new(Auth::new(
            b"0123456789abcdef0123456789abcdef".to_vec(),
            std::time::Duration::from_secs(60),
            2,
        ));
        let hash = auth.hash_password("pw-123456".into()).await.unwrap();
        let checks = (0..12).map(|i| {
            let (auth, hash) = (auth.clone(), hash.clone());
            tokio::spawn(async move { auth.verify_password(format!("guess-{i}"), hash).await })
        });
        for c in checks {
            assert!(!c.await.unwrap().unwrap());
        }
        assert!(auth.blocks.buffers() <= 2, "{}", auth.blocks.buffers());
    }

    use super::*;

    fn user() -> User {
        User {
            id: 7,
            uuid: "0b6f1c1e-1111-4222-8333-444455556666".into(),
            username: "alice".into(),
            email: "a@x".into(),
            avatar: String::new(),
            password_hash: String::new(),
            created_at: 0,
            last_login: None,
            revoked_tokens: Vec::new(),
            tokens_valid_from: 0,
        }
    }

    #[test]
    fn tokens_verify_and_expire() {
        let auth = Auth::new(
            b"0123456789abcdef0123".to_vec(),
            std::time::Duration::from_secs(100),
            1,
        );
        let t = auth.issue_token(&user(), 1000);
        let c = auth.verify_token(&t, 1050).unwrap();
        assert_eq!((c.id, c.username.as_str(), c.exp), (7, "alice", 1100));
        assert!(matches!(
            auth.verify_token(&t, 1100),
            Err(TokenError::Expired)
        ));
        let other = Auth::new(
            b"another secret of 20b".to_vec(),
            std::time::Duration::from_secs(100),
            1,
        );
        assert!(matches!(
            other.verify_token(&t, 1050),
            Err(TokenError::BadSignature)
        ));
        let mut tampered = t.clone();
        tampered.insert(t.find('.').unwrap() + 2, 'x');
        assert!(auth.verify_token(&tampered, 1050).is_err());
        assert!(matches!(
            auth.verify_token("a.b", 0),
            Err(TokenError::Malformed)
        ));
    }

    #[tokio::test]
    async fn passwords_hash_and_verify() {
        let auth = Auth::new(
            b"0123456789abcdef0123".to_vec(),
            std::time::Duration::from_secs(100),
            1,
        );
        let h = auth.hash_password("secret1".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(auth
            .verify_password("secret1".into(), h.clone())
            .await
            .unwrap());
        assert!(!auth.verify_password("secret2".into(), h).await.unwrap());
        assert!(!auth
            .verify_password("x".into(), "not a hash".into())
            .await
            .unwrap());
    }

    #[test]
    fn secret_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/token_secret");
        let a = Auth::load_or_create_secret(&path).unwrap();
        let b = Auth::load_or_create_secret(&path).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 64);
        let short = dir.path().join("short");
        std::fs::write(&short, "abc").unwrap();
        set_mode(&short, 0o600);
        assert!(matches!(
            Auth::load_or_create_secret(&short),
            Err(SecretError::TooShort { .. })
        ));
    }

    #[test]
    fn racing_creators_of_one_secret_file_all_get_the_same_complete_secret() {
        for round in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(format!("secret-{round}"));
            let barrier = std::sync::Barrier::new(8);
            let secrets: Vec<Vec<u8>> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..8)
                    .map(|_| {
                        s.spawn(|| {
                            barrier.wait();
                            Auth::load_or_create_secret(&path).unwrap()
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            assert!(secrets.iter().all(|s| s == &secrets[0]), "round {round}");
            assert_eq!(secrets[0].len(), 64);
            assert_eq!(std::fs::read(&path).unwrap(), secrets[0]);
            // Only the secret is left in the directory: no temporary file.
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        }
    }

    fn set_mode(path: &std::path::Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_secret_others_can_read_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token_secret");
        std::fs::write(&path, "0123456789abcdef0123456789abcdef").unwrap();
        for mode in [0o644, 0o640, 0o604, 0o666] {
            set_mode(&path, mode);
            let e = Auth::load_or_create_secret(&path).unwrap_err();
            assert!(matches!(e, SecretError::TooOpen { .. }), "{mode:o}: {e}");
            let text = e.to_string();
            assert!(text.contains("chmod 600"), "{text}");
        }
        for mode in [0o600, 0o400] {
            set_mode(&path, mode);
            assert!(Auth::load_or_create_secret(&path).is_ok(), "{mode:o}");
        }
    }
}
