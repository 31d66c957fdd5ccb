//! Password hashing (argon2id), verification of Weir's and Mosquitto's stored hashes, and the password policy.
//!
//! New passwords are always stored as argon2id PHC strings (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`).
//! Hashes imported from a Mosquitto `password_file` are verified as they are, and [`Verified::needs_upgrade`]
//! tells the caller to re-hash the password it has just seen in clear: an imported user moves to argon2id on
//! its first successful login, with no password reset.
//!
//! | stored form | scheme | needs upgrade |
//! | --- | --- | --- |
//! | `$argon2id$v=19$m=8192,t=2,p=1$...` with Weir's current parameters | argon2id | no |
//! | `$argon2id$...` with other parameters, `$argon2i$...`, `$argon2d$...` | Argon2 | yes |
//! | `$6$<salt b64>$<hash b64>` | Mosquitto 1.x: SHA-512(password ‖ salt) | yes |
//! | `$7$<iterations>$<salt b64>$<hash b64>` | Mosquitto 2.x: PBKDF2-HMAC-SHA512, 64-byte output | yes |

use std::fmt;

use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use base64ct::{Base64, Encoding};
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

/// Argon2id memory cost in KiB (8 MiB).
///
/// Chosen so that a Raspberry Pi 3 (Cortex-A53) verifies a password in under 100 ms. On the x86-64
/// development machine (AMD EPYC, AVX2 path of the `argon2` crate, release build, 40 runs on a loaded
/// 2-core VM) one verification with m = 8 MiB, t = 2, p = 1 took 7.3 ms at best, 8.2 ms median. A Cortex-A53
/// is roughly 8-10 times slower at this (no AVX2 path, much lower memory bandwidth): about 60-80 ms there.
///
/// This is below OWASP's minimum (m = 19 MiB, t = 2, p = 1), deliberately: that setting measured 19.7 ms
/// best / 21.8 ms median here, so 160-220 ms on the Pi, and a gateway verifies every device's password again
/// on every reconnect (after a restart or a network glitch, hundreds at once). What compensates: the login
/// [`throttle`](super::throttle) slows online guessing to a crawl, and the hashes live on the gateway itself
/// (offline cracking needs its disk first). Raising the cost later is a change to these constants: stored
/// hashes with other parameters report [`Verified::needs_upgrade`] and are re-hashed at the next successful
/// login.
pub const ARGON2_M_COST_KIB: u32 = 8 * 1024;
/// Argon2id passes over memory. See [`ARGON2_M_COST_KIB`].
pub const ARGON2_T_COST: u32 = 2;
/// Argon2id lanes: 1, since the Pi verifies on one core and other connections need the others.
pub const ARGON2_P_COST: u32 = 1;

/// The shortest password the policy accepts, in characters.
pub const MIN_PASSWORD_CHARS: usize = 8;

/// PBKDF2 iteration counts above this in a `$7$` hash are refused as malformed: a stored hash must not be able
/// to make one verification take minutes. Mosquitto's default is 101; 1,000,000 takes about a second here.
const MAX_PBKDF2_ITERATIONS: u32 = 1_000_000;

/// Length of a Mosquitto hash output (SHA-512 and PBKDF2-HMAC-SHA512 alike).
const MOSQUITTO_HASH_LEN: usize = 64;

/// Passwords refused whatever their length: the most common ones in leaked lists and the defaults that ship
/// with brokers and boards. Compared case-insensitively. Short ones are listed too, so that the error names
/// the real problem if the minimum length is ever lowered.
const COMMON_PASSWORDS: &[&str] = &[
    "password",
    "password1",
    "password123",
    "passw0rd",
    "12345678",
    "123456789",
    "1234567890",
    "87654321",
    "qwertyuiop",
    "qwerty123",
    "1q2w3e4r",
    "abc12345",
    "abcd1234",
    "iloveyou",
    "letmein1",
    "welcome1",
    "changeme",
    "admin",
    "admin123",
    "administrator",
    "mosquitto",
    "raspberry",
    "weir",
    "mqtt",
    "default",
];

/// The outcome of checking a password against a stored hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// The password is right.
    pub ok: bool,
    /// The password is right but the stored hash is not argon2id with Weir's current parameters: the caller
    /// should store `hash(password)` in its place. Always `false` when `ok` is `false`, so a wrong password
    /// never causes a write.
    pub needs_upgrade: bool,
}

/// Which scheme a stored hash uses, as recognised by [`scheme`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// An Argon2 PHC string (`$argon2id$`, `$argon2i$` or `$argon2d$`).
    Argon2,
    /// Mosquitto's `$6$`: salted SHA-512.
    MosquittoSha512,
    /// Mosquitto's `$7$`: PBKDF2-HMAC-SHA512.
    MosquittoPbkdf2,
}

/// Why a password could not be hashed or a stored hash could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PasswordError {
    /// The new password was refused by the policy; the text says why, for the user who chose it.
    #[error("password refused: {0}")]
    Weak(&'static str),
    /// The stored hash is not of a scheme Weir can verify.
    #[error("unknown password hash scheme (expected $argon2id$, $6$ or $7$)")]
    UnknownScheme,
    /// The stored hash has a known prefix but its fields are missing or undecodable.
    #[error("malformed {scheme} password hash: {reason}")]
    Malformed {
        /// The scheme the prefix announced.
        scheme: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The hash function itself failed (for instance, the system's random generator for the salt).
    #[error("password hashing failed: {0}")]
    Hashing(String),
}

/// Argon2's working memory ([`ARGON2_M_COST_KIB`] blocks of 1 KiB), to be kept and reused.
///
/// Argon2 is memory-hard: every computation fills `m` KiB. Allocating that per login and freeing it afterwards
/// leaves it with the allocator (glibc keeps freed 8 MiB chunks in per-thread arenas), so a storm of logins on
/// the blocking pool's threads grew the process by hundreds of MB that it never gave back. A caller that
/// verifies many passwords keeps one of these per concurrent computation and passes it to [`hash_with`] and
/// [`verify_with`]: the memory is allocated once, at first use, and never more than Weir's own cost.
#[derive(Default)]
pub struct Argon2Memory {
    blocks: Vec<Block>,
}

impl fmt::Debug for Argon2Memory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Argon2Memory").field("kib", &self.blocks.len()).finish()
    }
}

impl Argon2Memory {
    /// The first `count` blocks, allocating Weir's full cost on first use; `None` if `count` is more than that
    /// (a hash with parameters stronger than today's), which the caller computes in memory of its own.
    fn blocks(&mut self, count: usize) -> Result<Option<&mut [Block]>, PasswordError> {
        let kept = ARGON2_M_COST_KIB as usize;
        if count > kept {
            return Ok(None);
        }
        if self.blocks.len() < kept {
            self.blocks.try_reserve_exact(kept - self.blocks.len()).map_err(out_of_memory)?;
            self.blocks.resize(kept, Block::new());
        }
        Ok(self.blocks.get_mut(..count))
    }
}

/// Hashes a new password for storage, after checking it against the [policy](check_policy).
///
/// Returns an argon2id PHC string with a fresh random 16-byte salt. Takes tens of milliseconds on purpose: call
/// it on a blocking thread. Allocates argon2's memory for this call only; see [`hash_with`].
pub fn hash(password: &str) -> Result<String, PasswordError> {
    hash_with(password, &mut Argon2Memory::default())
}

/// [`hash`] in working memory the caller keeps.
pub fn hash_with(password: &str, memory: &mut Argon2Memory) -> Result<String, PasswordError> {
    check_policy(password)?;
    let hashing = |e: &dyn fmt::Display| PasswordError::Hashing(e.to_string());
    let salt = argon2::password_hash::try_generate_salt().map_err(|e| hashing(&e))?;
    let params = current_params()?;
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    let hasher = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let count = params.block_count();
    match memory.blocks(count)? {
        Some(blocks) => hasher.hash_password_into_with_memory(password.as_bytes(), &salt, &mut out, blocks),
        None => hasher.hash_password_into(password.as_bytes(), &salt, &mut out),
    }
    .map_err(|e| hashing(&e))?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(|e| hashing(&e))?,
        salt: Some(Salt::new(&salt).map_err(|e| hashing(&e))?),
        hash: Some(Output::new(&out).map_err(|e| hashing(&e))?),
    };
    Ok(phc.to_string())
}

/// Checks `password` against a stored hash of any supported scheme.
///
/// `password` is bytes because an MQTT CONNECT password is binary data. A wrong password is `Ok` with
/// `ok: false`; an error means the stored hash itself is unusable (which the caller should log: that user
/// cannot log in until an administrator sets a new password). Comparisons are constant-time. An Argon2 hash
/// allocates its memory for this call only; see [`verify_with`].
pub fn verify(stored: &str, password: &[u8]) -> Result<Verified, PasswordError> {
    verify_with(stored, password, &mut Argon2Memory::default())
}

/// [`verify`], with Argon2 computed in working memory the caller keeps (Mosquitto's schemes need none).
pub fn verify_with(
    stored: &str,
    password: &[u8],
    memory: &mut Argon2Memory,
) -> Result<Verified, PasswordError> {
    let (ok, up_to_date) = match scheme(stored)? {
        Scheme::Argon2 => verify_argon2(stored, password, memory)?,
        Scheme::MosquittoSha512 => (verify_sha512(stored, password)?, false),
        Scheme::MosquittoPbkdf2 => (verify_pbkdf2(stored, password)?, false),
    };
    Ok(Verified { ok, needs_upgrade: ok && !up_to_date })
}

/// Recognises the scheme of a stored hash and checks that its fields parse, without verifying any password.
///
/// The Mosquitto importer uses it to refuse a bad line at import time, with its line number, rather than at
/// the user's first login.
pub fn scheme(stored: &str) -> Result<Scheme, PasswordError> {
    if stored.starts_with("$argon2") {
        parse_argon2(stored)?;
        Ok(Scheme::Argon2)
    } else if let Some(rest) = stored.strip_prefix("$6$") {
        parse_sha512(rest)?;
        Ok(Scheme::MosquittoSha512)
    } else if let Some(rest) = stored.strip_prefix("$7$") {
        parse_pbkdf2(rest)?;
        Ok(Scheme::MosquittoPbkdf2)
    } else {
        Err(PasswordError::UnknownScheme)
    }
}

/// Refuses passwords that are empty, shorter than [`MIN_PASSWORD_CHARS`] characters, one character repeated, or
/// in a short built-in list of the most common passwords and broker defaults.
///
/// Deliberately small: a gateway has no room for a large breach corpus, and the throttle limits online
/// guessing. The error text is meant to be shown to the person choosing the password.
pub fn check_policy(password: &str) -> Result<(), PasswordError> {
    if password.is_empty() {
        return Err(PasswordError::Weak("the password is empty"));
    }
    let lowered = password.to_lowercase();
    if COMMON_PASSWORDS.contains(&lowered.as_str()) {
        return Err(PasswordError::Weak("the password is one of the most common passwords"));
    }
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(PasswordError::Weak("the password is shorter than 8 characters"));
    }
    let mut chars = password.chars();
    if let Some(first) = chars.next()
        && chars.all(|c| c == first)
    {
        return Err(PasswordError::Weak("the password is one character repeated"));
    }
    Ok(())
}

/// Weir's current Argon2 parameters.
fn current_params() -> Result<Params, PasswordError> {
    Params::new(ARGON2_M_COST_KIB, ARGON2_T_COST, ARGON2_P_COST, None)
        .map_err(|e| PasswordError::Hashing(e.to_string()))
}

fn out_of_memory(_: std::collections::TryReserveError) -> PasswordError {
    PasswordError::Hashing("out of memory for argon2".into())
}

/// Returns (password right, hash uses the current algorithm and parameters).
///
/// What `argon2`'s own `PasswordVerifier` does, in the caller's memory: algorithm, version and parameters
/// (output length included) come from the stored hash, the output is compared in constant time.
fn verify_argon2(
    stored: &str,
    password: &[u8],
    memory: &mut Argon2Memory,
) -> Result<(bool, bool), PasswordError> {
    const UNUSABLE: PasswordError =
        PasswordError::Malformed { scheme: "Argon2", reason: "unsupported algorithm or parameters" };
    let (parsed, params) = parse_argon2(stored)?;
    let up_to_date = parsed.algorithm.as_str() == "argon2id"
        && parsed.version == Some(Version::V0x13.into())
        && params.m_cost() == ARGON2_M_COST_KIB
        && params.t_cost() == ARGON2_T_COST
        && params.p_cost() == ARGON2_P_COST;
    let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else {
        return Err(PasswordError::Malformed { scheme: "Argon2", reason: "no salt or no hash" });
    };
    let algorithm = Algorithm::try_from(parsed.algorithm.as_str()).map_err(|_| UNUSABLE)?;
    let version =
        parsed.version.map(Version::try_from).transpose().map_err(|_| UNUSABLE)?.unwrap_or_default();
    let mut buffer = [0u8; Output::MAX_LENGTH];
    let out = buffer.get_mut(..expected.len()).ok_or(UNUSABLE)?;
    let hasher = Argon2::new(algorithm, version, params.clone());
    match memory.blocks(params.block_count())? {
        Some(blocks) => hasher.hash_password_into_with_memory(password, salt, out, blocks),
        // Stronger than today's parameters: rare, and re-hashed with today's at this login.
        None => hasher.hash_password_into(password, salt, out),
    }
    .map_err(|_| UNUSABLE)?;
    Ok((bool::from(out.ct_eq(expected.as_bytes())), up_to_date))
}

/// Parses a PHC string and checks that it has a salt, an output and valid Argon2 parameters (the PHC parser
/// alone accepts `$argon2id$v=19$m=8192`, which no password can match).
fn parse_argon2(stored: &str) -> Result<(PasswordHash, Params), PasswordError> {
    const SCHEME: &str = "Argon2";
    let parsed = PasswordHash::new(stored)
        .map_err(|_| PasswordError::Malformed { scheme: SCHEME, reason: "not a PHC string" })?;
    if parsed.salt.is_none() || parsed.hash.is_none() {
        return Err(PasswordError::Malformed { scheme: SCHEME, reason: "no salt or no hash" });
    }
    Algorithm::try_from(parsed.algorithm.as_str())
        .map_err(|_| PasswordError::Malformed { scheme: SCHEME, reason: "unknown Argon2 variant" })?;
    if let Some(version) = parsed.version {
        Version::try_from(version)
            .map_err(|_| PasswordError::Malformed { scheme: SCHEME, reason: "unknown Argon2 version" })?;
    }
    let params = Params::try_from(&parsed)
        .map_err(|_| PasswordError::Malformed { scheme: SCHEME, reason: "invalid parameters" })?;
    Ok((parsed, params))
}

/// Mosquitto `$6$<salt>$<hash>`: hash = SHA-512(password ‖ salt).
fn verify_sha512(stored: &str, password: &[u8]) -> Result<bool, PasswordError> {
    let (salt, expected) = parse_sha512(stored.get(3..).unwrap_or_default())?;
    let mut digest = Sha512::new();
    digest.update(password);
    digest.update(&salt);
    let computed = digest.finalize();
    Ok(bool::from(computed.as_slice().ct_eq(&expected)))
}

/// Mosquitto `$7$<iterations>$<salt>$<hash>`: hash = PBKDF2-HMAC-SHA512(password, salt, iterations, 64).
fn verify_pbkdf2(stored: &str, password: &[u8]) -> Result<bool, PasswordError> {
    let (iterations, salt, expected) = parse_pbkdf2(stored.get(3..).unwrap_or_default())?;
    let mut computed = [0u8; MOSQUITTO_HASH_LEN];
    pbkdf2::pbkdf2_hmac::<Sha512>(password, &salt, iterations, &mut computed);
    Ok(bool::from(computed.as_slice().ct_eq(&expected)))
}

/// Splits `<salt b64>$<hash b64>` (what follows `$6$`).
fn parse_sha512(rest: &str) -> Result<(Vec<u8>, Vec<u8>), PasswordError> {
    const SCHEME: &str = "$6$";
    let (salt, hash) =
        rest.split_once('$').ok_or(PasswordError::Malformed { scheme: SCHEME, reason: "no hash" })?;
    Ok((decode_salt(SCHEME, salt)?, decode_hash(SCHEME, hash)?))
}

/// Splits `<iterations>$<salt b64>$<hash b64>` (what follows `$7$`).
fn parse_pbkdf2(rest: &str) -> Result<(u32, Vec<u8>, Vec<u8>), PasswordError> {
    const SCHEME: &str = "$7$";
    let mut fields = rest.splitn(3, '$');
    let (Some(iterations), Some(salt), Some(hash)) = (fields.next(), fields.next(), fields.next()) else {
        return Err(PasswordError::Malformed {
            scheme: SCHEME,
            reason: "expected $7$<iterations>$<salt>$<hash>",
        });
    };
    let iterations =
        iterations.parse::<u32>().ok().filter(|n| (1..=MAX_PBKDF2_ITERATIONS).contains(n)).ok_or(
            PasswordError::Malformed { scheme: SCHEME, reason: "iterations not between 1 and 1000000" },
        )?;
    Ok((iterations, decode_salt(SCHEME, salt)?, decode_hash(SCHEME, hash)?))
}

fn decode_salt(scheme: &'static str, b64: &str) -> Result<Vec<u8>, PasswordError> {
    match Base64::decode_vec(b64) {
        Ok(salt) if !salt.is_empty() => Ok(salt),
        Ok(_) => Err(PasswordError::Malformed { scheme, reason: "empty salt" }),
        Err(_) => Err(PasswordError::Malformed { scheme, reason: "salt is not base64" }),
    }
}

fn decode_hash(scheme: &'static str, b64: &str) -> Result<Vec<u8>, PasswordError> {
    match Base64::decode_vec(b64) {
        Ok(hash) if hash.len() == MOSQUITTO_HASH_LEN => Ok(hash),
        Ok(_) => Err(PasswordError::Malformed { scheme, reason: "hash is not 64 bytes" }),
        Err(_) => Err(PasswordError::Malformed { scheme, reason: "hash is not base64" }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a `$6$` hash with the algorithm Mosquitto 1.x uses, for round trips with random inputs.
    fn mosquitto_sha512(password: &[u8], salt: &[u8]) -> String {
        let mut digest = Sha512::new();
        digest.update(password);
        digest.update(salt);
        format!("$6${}${}", Base64::encode_string(salt), Base64::encode_string(&digest.finalize()))
    }

    /// Builds a `$7$` hash with the algorithm Mosquitto 2.x uses.
    fn mosquitto_pbkdf2(password: &[u8], salt: &[u8], iterations: u32) -> String {
        let mut out = [0u8; 64];
        pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out);
        format!("$7${iterations}${}${}", Base64::encode_string(salt), Base64::encode_string(&out))
    }

    const RIGHT: Verified = Verified { ok: true, needs_upgrade: false };
    const RIGHT_OLD: Verified = Verified { ok: true, needs_upgrade: true };
    const WRONG: Verified = Verified { ok: false, needs_upgrade: false };

    #[test]
    fn hash_and_verify_round_trip() {
        let stored = hash("correct horse battery").unwrap();
        assert!(stored.starts_with("$argon2id$v=19$m=8192,t=2,p=1$"), "{stored}");
        assert_eq!(scheme(&stored), Ok(Scheme::Argon2));
        assert_eq!(verify(&stored, b"correct horse battery"), Ok(RIGHT));
        assert_eq!(verify(&stored, b"correct horse batterY"), Ok(WRONG));
        assert_eq!(verify(&stored, b""), Ok(WRONG));
    }

    #[test]
    fn one_reused_buffer_verifies_phc_hashes_like_the_reference() {
        // From the reference implementation's test suite (phc-winner-argon2 src/test.c), password "password":
        // a smaller cost than Weir's (in part of the kept buffer), two lanes, argon2i, and a larger cost
        // (64 MiB, computed in memory of its own). One buffer serves them all in turn, so nothing of one
        // computation can leak into the next.
        let reference = [
            "$argon2id$v=19$m=256,t=2,p=1$c29tZXNhbHQ$nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4",
            "$argon2id$v=19$m=256,t=2,p=2$c29tZXNhbHQ$bQk8UB/VmZZF4Oo79iDXuL5/0ttZwg2f/5U52iv1cDc",
            "$argon2i$v=19$m=65536,t=1,p=1$c29tZXNhbHQAAAAAAAAAAA$+r0d29hqEB0yasKr55ZgICsQGSkl0v0kgwhd+U3wyRo",
            "$argon2id$v=19$m=65536,t=2,p=1$c29tZXNhbHQ$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc",
        ];
        // Weir's own parameters, hashed by the argon2 crate's allocating path (an independent computation).
        let params = current_params().unwrap();
        let ours = argon2::PasswordHasher::hash_password_with_salt(
            &Argon2::new(Algorithm::Argon2id, Version::V0x13, params),
            b"password",
            b"somesaltsomesalt",
        )
        .unwrap()
        .to_string();
        let mut memory = Argon2Memory::default();
        for _ in 0..2 {
            for stored in reference.iter().copied().chain([ours.as_str()]) {
                let expected = if stored == ours { RIGHT } else { RIGHT_OLD };
                assert_eq!(verify_with(stored, b"password", &mut memory), Ok(expected), "{stored}");
                assert_eq!(verify_with(stored, b"sassword", &mut memory), Ok(WRONG), "{stored}");
            }
        }
        assert_eq!(memory.blocks.len(), ARGON2_M_COST_KIB as usize, "the kept buffer never grows past 8 MiB");
    }

    #[test]
    fn hashes_made_in_a_reused_buffer_verify_with_the_argon2_crate() {
        let mut memory = Argon2Memory::default();
        let first = hash_with("correct horse battery", &mut memory).unwrap();
        let second = hash_with("correct horse battery", &mut memory).unwrap();
        assert_ne!(first, second, "fresh salts");
        for stored in [&first, &second] {
            assert!(stored.starts_with("$argon2id$v=19$m=8192,t=2,p=1$"), "{stored}");
            let parsed = PasswordHash::new(stored).unwrap();
            let upstream = Argon2::default();
            assert_eq!(
                argon2::PasswordVerifier::verify_password(&upstream, b"correct horse battery", &parsed),
                Ok(())
            );
            assert!(
                argon2::PasswordVerifier::verify_password(&upstream, b"correct horse batterY", &parsed)
                    .is_err()
            );
            assert_eq!(verify_with(stored, b"correct horse battery", &mut memory), Ok(RIGHT));
            assert_eq!(verify_with(stored, b"wrong horse battery", &mut memory), Ok(WRONG));
        }
        assert!(matches!(hash_with("short", &mut memory), Err(PasswordError::Weak(_))));
    }

    #[test]
    fn salts_differ() {
        let a = hash("correct horse battery").unwrap();
        let b = hash("correct horse battery").unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn argon2_with_other_parameters_needs_upgrade() {
        let params = Params::new(1024, 1, 1, None).unwrap();
        for (algorithm, password) in
            [(Algorithm::Argon2id, "old cheap hash"), (Algorithm::Argon2i, "argon2i hash")]
        {
            let weak = Argon2::new(algorithm, Version::V0x13, params.clone());
            let stored =
                argon2::PasswordHasher::hash_password(&weak, password.as_bytes()).unwrap().to_string();
            assert_eq!(verify(&stored, password.as_bytes()), Ok(RIGHT_OLD), "{stored}");
            assert_eq!(verify(&stored, b"something else"), Ok(WRONG));
        }
    }

    #[test]
    fn mosquitto_vectors_from_mosquitto_passwd() {
        // Produced with the Debian package of Mosquitto 2.0.11:
        //   mosquitto_passwd -c -b f plc1 'S3cure-Pump#4'                         (default: $7$, 101 iterations)
        //   mosquitto_passwd -H sha512 -b f legacy password                       ($6$)
        //   mosquitto_passwd -H sha512-pbkdf2 -I 1000 -b f hmi 'Hmi-Panel-2024'   ($7$, 1000 iterations)
        let plc1 = "$7$101$q55UyFttirtQuZ1l$XFH5jKTwsZhemob6xRFbsZRQ1Sc3NKyZ3QqeOEVkBe6aiYjoQZajZVxhyNV3lTtEqURoGsbs6oXXNx8QDH7fww==";
        let legacy = "$6$56iYXZm3K2CuoiAS$zqHNY+HvpOTCHXlokJs2MxJuh9RGqM7X668RkwcnRaOJK9Nty7yFmiBUpziTk5D5oxfKZX6E8dON7F4KA1smeA==";
        let hmi = "$7$1000$fKPyBK+4k8Izm7a9$EymNIP63cBNgbpI33yJ+1aD1n4MmpYKUeSjoZQ/0qUUHdXfAcBsQNxe3KmnUBbiRG9Ae6rkJkmIHH+AZ9GhR6g==";
        assert_eq!(verify(plc1, b"S3cure-Pump#4"), Ok(RIGHT_OLD));
        assert_eq!(verify(plc1, b"S3cure-Pump#5"), Ok(WRONG));
        assert_eq!(verify(legacy, b"password"), Ok(RIGHT_OLD));
        assert_eq!(verify(legacy, b"Password"), Ok(WRONG));
        assert_eq!(verify(hmi, b"Hmi-Panel-2024"), Ok(RIGHT_OLD));
        assert_eq!(verify(hmi, b"Hmi-Panel-2025"), Ok(WRONG));
    }

    #[test]
    fn mosquitto_vectors_from_python_hashlib() {
        // Produced with Python 3:
        //   salt = bytes(range(1, 13))
        //   base64.b64encode(hashlib.pbkdf2_hmac('sha512', b'password', salt, 101, 64))
        //   base64.b64encode(hashlib.sha512(b'password' + salt).digest())
        let pbkdf2 = "$7$101$AQIDBAUGBwgJCgsM$vi3gtTBBsyA0ndLJ0V/YApuRViDA9ghC166cp1AjnIEUVevnLN/JRt4mV1VV33uV0F7F5qO0R1SqlyHqKHWWdg==";
        let sha512 = "$6$AQIDBAUGBwgJCgsM$VAE4iiG4X8R0u8r7L6jZAUj8HcNCmOJkImcb96pY+1NnTcLQalDWS+60RpHU0swm8QXqKGBl65uEAilSL4tDvQ==";
        let salt: Vec<u8> = (1..=12).collect();
        assert_eq!(mosquitto_pbkdf2(b"password", &salt, 101), pbkdf2);
        assert_eq!(mosquitto_sha512(b"password", &salt), sha512);
        assert_eq!(verify(pbkdf2, b"password"), Ok(RIGHT_OLD));
        assert_eq!(verify(sha512, b"password"), Ok(RIGHT_OLD));
    }

    #[test]
    fn mosquitto_generated_round_trips() {
        for (password, salt) in
            [(&b"pump-station-7"[..], &b"twelve bytes"[..]), (b"\xff\x00binary", b"\x00\x01\x02")]
        {
            let six = mosquitto_sha512(password, salt);
            let seven = mosquitto_pbkdf2(password, salt, 7);
            for stored in [&six, &seven] {
                assert_eq!(verify(stored, password), Ok(RIGHT_OLD), "{stored}");
                assert_eq!(verify(stored, b"pump-station-8"), Ok(WRONG), "{stored}");
            }
        }
    }

    #[test]
    fn malformed_and_unknown_hashes() {
        let unknown = ["", "plaintext", "$1$abc$def", "$5$abc$def", "$2b$10$abcdefghijklmnopqrstuu"];
        for stored in unknown {
            assert_eq!(scheme(stored), Err(PasswordError::UnknownScheme), "{stored}");
            assert_eq!(verify(stored, b"x"), Err(PasswordError::UnknownScheme), "{stored}");
        }
        let good_hash = Base64::encode_string(&[7u8; 64]);
        let malformed = [
            "$6$".to_string(),
            "$6$AQID".to_string(),
            format!("$6$$${good_hash}"),
            format!("$6$!!!${good_hash}"),
            "$6$AQID$AQID".to_string(),
            format!("$7$AQID${good_hash}"),
            format!("$7$0$AQID${good_hash}"),
            format!("$7$-5$AQID${good_hash}"),
            format!("$7$1000001$AQID${good_hash}"),
            format!("$7$abc$AQID${good_hash}"),
            "$7$101$AQID$AQID".to_string(),
            "$argon2id$v=19$m=8192".to_string(),
            "$argon2id$v=19$m=8192,t=2,p=1$c2FsdHNhbHRzYWx0".to_string(),
            "$argon2id$v=19$m=1,t=2,p=1$c2FsdHNhbHRzYWx0$c2FsdHNhbHRzYWx0c2FsdHNhbHRzYWx0".to_string(),
            "$argon2x$v=19$m=8192,t=2,p=1$c2FsdHNhbHRzYWx0$c2FsdHNhbHRzYWx0c2FsdHNhbHRzYWx0".to_string(),
        ];
        for stored in &malformed {
            assert!(matches!(scheme(stored), Err(PasswordError::Malformed { .. })), "{stored}");
            assert!(matches!(verify(stored, b"x"), Err(PasswordError::Malformed { .. })), "{stored}");
        }
        assert_eq!(scheme(&format!("$7$101$AQID${good_hash}")), Ok(Scheme::MosquittoPbkdf2));
        assert_eq!(scheme(&format!("$6$AQID${good_hash}")), Ok(Scheme::MosquittoSha512));
    }

    #[test]
    fn policy() {
        for weak in
            ["", "short", "seven77", "aaaaaaaa", "ZZZZZZZZZZZZ", "password", "PassWord", "12345678", "admin"]
        {
            assert!(matches!(check_policy(weak), Err(PasswordError::Weak(_))), "{weak:?} should be refused");
            assert!(matches!(hash(weak), Err(PasswordError::Weak(_))), "{weak:?} should not be hashed");
        }
        assert_eq!(check_policy(""), Err(PasswordError::Weak("the password is empty")));
        assert_eq!(
            check_policy("Mosquitto"),
            Err(PasswordError::Weak("the password is one of the most common passwords"))
        );
        assert_eq!(
            check_policy("abc"),
            Err(PasswordError::Weak("the password is shorter than 8 characters"))
        );
        // Characters, not bytes: eight two-byte characters are long enough, four are not.
        assert_eq!(check_policy("ääääöööö"), Ok(()));
        assert!(check_policy("äöüß").is_err());
        for fine in ["correct horse", "S3cure-Pump#4", "aaaaaaab", "pump station 7"] {
            assert_eq!(check_policy(fine), Ok(()), "{fine:?} should be accepted");
        }
        assert_eq!(
            PasswordError::Weak("the password is empty").to_string(),
            "password refused: the password is empty"
        );
    }
}
