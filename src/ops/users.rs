//! MQTT and console users.

use super::{Actor, Ops, OpsError};
use crate::security::UserInfo;

impl Ops {
    /// Adds a user with a password and roles (`admin` may do everything).
    pub async fn add_user(
        &self,
        name: &str,
        password: &str,
        roles: &[String],
        actor: &Actor,
    ) -> Result<(), OpsError> {
        Ok(self.security.add_user(name, password, roles, actor.as_str()).await?)
    }

    pub async fn set_password(&self, name: &str, password: &str, actor: &Actor) -> Result<(), OpsError> {
        Ok(self.security.set_password(name, password, actor.as_str()).await?)
    }

    /// Replaces a user's roles.
    pub async fn set_roles(&self, name: &str, roles: &[String], actor: &Actor) -> Result<(), OpsError> {
        Ok(self.security.set_roles(name, roles, actor.as_str()).await?)
    }

    /// Deletes a user; a running gateway closes its connections.
    pub async fn delete_user(&self, name: &str, actor: &Actor) -> Result<(), OpsError> {
        Ok(self.security.delete_user(name, actor.as_str()).await?)
    }

    pub async fn list_users(&self) -> Result<Vec<UserInfo>, OpsError> {
        Ok(self.security.list_users().await?)
    }
}
