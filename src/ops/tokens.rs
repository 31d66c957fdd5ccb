//! Bearer tokens for machines (a Prometheus scraper reading `/metrics` on a console off loopback). The token is
//! shown once, when made; only its SHA-256 is kept.

use super::{Actor, Ops, OpsError};
use crate::store::config_db::{self, Audited, TokenInfo};

impl Ops {
    /// Makes a token named `name`; returns its value, which is not kept and cannot be shown again.
    pub async fn add_token(&self, name: &str, actor: &Actor) -> Result<String, OpsError> {
        let valid = (1..=64).contains(&name.len())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !valid {
            return Err(OpsError::Invalid(format!(
                "token name {name:?}: 1 to 64 letters, digits, '-', '_' or '.'"
            )));
        }
        let mut bytes = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .map_err(|_| OpsError::Invalid("the system random number generator failed".into()))?;
        let token = format!("weir_{}", hex(&bytes));
        let audited = Audited { actor: actor.as_str(), action: "token.add", detail: name };
        if !config_db::insert_token(self.security.pool(), name, &digest(&token), audited).await? {
            return Err(OpsError::Invalid(format!("a token named {name:?} exists already")));
        }
        Ok(token)
    }

    pub async fn delete_token(&self, name: &str, actor: &Actor) -> Result<(), OpsError> {
        let audited = Audited { actor: actor.as_str(), action: "token.del", detail: name };
        if !config_db::delete_token(self.security.pool(), name, audited).await? {
            return Err(OpsError::Invalid(format!("no token named {name:?}")));
        }
        Ok(())
    }

    pub async fn list_tokens(&self) -> Result<Vec<TokenInfo>, OpsError> {
        Ok(config_db::list_tokens(self.security.pool()).await?)
    }

    /// The name of the token presented, if it is one of ours.
    pub async fn check_token(&self, token: &str) -> Result<Option<String>, OpsError> {
        Ok(config_db::use_token(self.security.pool(), &digest(token)).await?)
    }
}

fn digest(token: &str) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(token.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_token_is_shown_once_checked_by_its_digest_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let ops = Ops::open(dir.path()).await.unwrap();
        let actor = Actor::new("test");
        let token = ops.add_token("prometheus", &actor).await.unwrap();
        assert!(token.starts_with("weir_") && token.len() == 69);
        assert!(ops.add_token("prometheus", &actor).await.is_err(), "names are unique");
        assert!(ops.add_token("bad name", &actor).await.is_err());
        assert_eq!(ops.check_token(&token).await.unwrap().as_deref(), Some("prometheus"));
        assert_eq!(ops.check_token("weir_guess").await.unwrap(), None);
        let listed = ops.list_tokens().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert!(listed[0].last_used.is_some());
        ops.delete_token("prometheus", &actor).await.unwrap();
        assert_eq!(ops.check_token(&token).await.unwrap(), None);
    }
}
