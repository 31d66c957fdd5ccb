//! Users and rules from another broker.

use super::{Actor, Ops, OpsError};
use crate::security::ImportSummary;

impl Ops {
    /// Imports a Mosquitto password file and ACL file (their texts), all or nothing.
    pub async fn import_mosquitto(
        &self,
        passwd: Option<&str>,
        acl: Option<&str>,
        actor: &Actor,
    ) -> Result<ImportSummary, OpsError> {
        if passwd.is_none() && acl.is_none() {
            return Err(OpsError::Invalid("give a password file, an ACL file or both".into()));
        }
        Ok(self.security.import_mosquitto(passwd, acl, actor.as_str()).await?)
    }
}
